package tests

import "crypto/tls"

// tlsClientConfig trusts the relay's self-signed test certificate, if any.
func (r *relay) tlsClientConfig() *tls.Config {
	if !r.cfg.TLS.Enabled() {
		return nil
	}
	return &tls.Config{InsecureSkipVerify: true} //nolint:gosec // test certificate made by the test
}
