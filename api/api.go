// Package api embeds the OpenAPI description of the HTTP API.
//
// openapi.yaml is written by hand, as the public description of what
// backends send and get; the relay serves it at GET /openapi.yaml, and
// tests/openapi_test.go checks real answers of a running relay against it.
package api

import _ "embed"

// OpenAPI is the OpenAPI 3.1 document of the relay's HTTP API, in YAML.
//
//go:embed openapi.yaml
var OpenAPI []byte
