// Package web holds the browser key holder, embedded into the relay binary so
// that it runs from any directory. Only page assets are embedded, never Go
// source.
package web

import "embed"

// Files is the page served at "/": index.html and its scripts and styles.
//
//go:embed *.html *.js *.css
var Files embed.FS
