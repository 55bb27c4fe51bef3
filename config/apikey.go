package config

import "unicode"

// APIKey is one entry of api_keys: a bearer token and the public name key
// holders are shown for the requests it makes (contract §B). A bare key in
// the file has no name.
type APIKey struct {
	Name string `yaml:"name"`
	Key  string `yaml:"key"`
}

// BareKeys makes nameless entries of keys, as a bare list in the file does.
func BareKeys(keys ...string) []APIKey {
	out := make([]APIKey, len(keys))
	for i, k := range keys {
		out[i] = APIKey{Key: k}
	}
	return out
}

// validAPIKeyName: 1–64 letters, digits, '-', '_', '.' and space.
func validAPIKeyName(s string) bool {
	n := 0
	for _, r := range s {
		n++
		if !(unicode.IsLetter(r) || unicode.IsDigit(r) || r == '-' || r == '_' || r == '.' || r == ' ') {
			return false
		}
	}
	return n >= 1 && n <= 64
}
