package signer

import (
	"bytes"
	"crypto/ed25519"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
)

// ParsePrivateKey reads an Ed25519 private key in one of the forms a
// service is likely to keep in a file or secret store:
//
//   - PEM "PRIVATE KEY" (PKCS #8), as written by
//     `openssl genpkey -algorithm ed25519`;
//   - standard base64 of the 32-byte seed or of the 64-byte
//     crypto/ed25519 private key (surrounding whitespace is ignored);
//   - the 32 or 64 raw bytes.
//
// A 64-byte key whose public half does not match its seed is refused.
func ParsePrivateKey(data []byte) (ed25519.PrivateKey, error) {
	if block, _ := pem.Decode(data); block != nil {
		if block.Type != "PRIVATE KEY" {
			return nil, fmt.Errorf("signer: PEM block %q, want \"PRIVATE KEY\" (PKCS #8)", block.Type)
		}
		k, err := x509.ParsePKCS8PrivateKey(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("signer: PKCS #8 key: %w", err)
		}
		ek, ok := k.(ed25519.PrivateKey)
		if !ok {
			return nil, fmt.Errorf("signer: PKCS #8 key is a %T, not Ed25519", k)
		}
		return ek, nil
	}
	raw := data
	if b, err := base64.StdEncoding.DecodeString(string(bytes.TrimSpace(data))); err == nil &&
		(len(b) == ed25519.SeedSize || len(b) == ed25519.PrivateKeySize) {
		raw = b
	}
	switch len(raw) {
	case ed25519.SeedSize:
		return ed25519.NewKeyFromSeed(raw), nil
	case ed25519.PrivateKeySize:
		k := ed25519.NewKeyFromSeed(raw[:ed25519.SeedSize])
		if !bytes.Equal(k, raw) {
			return nil, errors.New("signer: 64-byte key: public half does not match the seed")
		}
		return k, nil
	}
	return nil, errors.New("signer: not an Ed25519 private key (want PKCS #8 PEM, or a 32-byte seed or 64-byte key, raw or base64)")
}

// LoadPrivateKey reads path and parses it with ParsePrivateKey. Keep the
// file readable by the service's user only.
func LoadPrivateKey(path string) (ed25519.PrivateKey, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("signer: %w", err)
	}
	k, err := ParsePrivateKey(data)
	if err != nil {
		return nil, fmt.Errorf("%w (in %s)", err, path)
	}
	return k, nil
}
