package httpapi

import (
	"net/netip"
	"strings"

	"github.com/gofiber/fiber/v2"
)

// Bounds on the X-Forwarded-For work done per request, whatever a client
// sends: only the rightmost maxXFFBytes bytes of the header lines, and in
// them only the rightmost maxXFFEntries non-empty entries, are looked at.
// A real chain has a handful of hops; when a bound is reached the walk ends
// as if the header ended there.
const (
	maxXFFBytes   = 4096
	maxXFFEntries = 64
)

// clientIP is the address of the client: the TCP peer, or when that is a
// trusted proxy, the address X-Forwarded-For names (see realClientIP). Rate
// limits are keyed by rateKey of it.
func (s *Server) clientIP(c *fiber.Ctx) netip.Addr {
	peer, _ := netip.AddrFromSlice(c.Context().RemoteIP())
	peer = peer.Unmap()
	if !isTrustedProxy(peer, s.trustedProxies) {
		return peer // the header is not read at all
	}
	// Every header line, in order: a proxy may append its own line instead
	// of extending the client's.
	return realClientIP(peer, joinXFF(c.Request().Header.PeekAll(fiber.HeaderXForwardedFor)), s.trustedProxies)
}

// rateKey is the per-client-IP rate-limit bucket of a: an IPv4 address is
// its own bucket, an IPv6 address shares the bucket of its /64, the
// smallest block a client is normally given (an IPv4-mapped address counts
// as IPv4). Keys of the two families never collide, as only IPv6 keys have
// a "/".
func rateKey(a netip.Addr) string {
	a = a.Unmap()
	if !a.Is6() {
		return a.String() // IPv4, or "invalid IP" for the zero Addr
	}
	p, _ := a.WithZone("").Prefix(64) // cannot fail for IPv6 without a zone
	return p.String()
}

// joinXFF joins the X-Forwarded-For header lines, in order, with '\n' into
// the form realClientIP reads. Only the rightmost maxXFFBytes+1 bytes are
// kept (one more than realClientIP reads, so that it can tell whether its
// window starts on an entry boundary), so a huge header costs one copy of
// at most that much.
func joinXFF(lines [][]byte) string {
	const limit = maxXFFBytes + 1
	// lines[first:] joined are n bytes, the fewest lines that reach limit.
	n, first := 0, len(lines)
	for first > 0 && n < limit {
		first--
		n += len(lines[first])
		if first < len(lines)-1 {
			n++ // the '\n' after it
		}
	}
	skip := max(0, n-limit) // at most len(lines[first])
	var b strings.Builder
	b.Grow(n - skip)
	for i := first; i < len(lines); i++ {
		if i == first {
			b.Write(lines[i][skip:])
			continue
		}
		b.WriteByte('\n')
		b.Write(lines[i])
	}
	return b.String()
}

// realClientIP finds the client among the TCP peer and X-Forwarded-For.
//
// xff is every X-Forwarded-For header line, in order, joined by '\n' (see
// joinXFF); ',' and '\n' both separate entries, so the lines count as one
// comma-separated list. It is read only when the peer is a trusted proxy,
// and then from the right: the first entry that is not itself a trusted
// proxy is the client, so whatever a client puts in the header itself (on
// the left) is never believed. If every entry is trusted, the leftmost one
// is used.
//
// An entry, trimmed of spaces and tabs, is an IPv4 address, optionally with
// a port (1.2.3.4, 1.2.3.4:5678), or an IPv6 address, optionally bracketed
// and then optionally with a port (2001:db8::1, [2001:db8::1],
// [2001:db8::1]:443); the port is ignored and IPv4-mapped IPv6 counts as
// IPv4. Anything else, including an address with a zone (fe80::1%eth0) or
// a bracketed IPv4 address, is unparsable: it stops the walk, and the last
// good address (the nearest trusted hop, or the peer) is the client.
// Empty entries (",," or a blank line) are skipped; they do not stop the
// walk. Only the rightmost maxXFFBytes bytes and maxXFFEntries non-empty
// entries are examined; reaching either bound ends the walk like the left
// end of the header (an entry cut by the byte window is dropped, never
// read in part).
func realClientIP(peer netip.Addr, xff string, trusted []netip.Prefix) netip.Addr {
	peer = peer.Unmap()
	if !isTrustedProxy(peer, trusted) {
		return peer
	}
	if len(xff) > maxXFFBytes {
		cut := len(xff) - maxXFFBytes
		partial := xff[cut-1] != ',' && xff[cut-1] != '\n'
		xff = xff[cut:]
		if partial {
			// The window starts inside an entry: drop that part of it, as
			// its tail might parse as some other address.
			if i := strings.IndexAny(xff, ",\n"); i >= 0 {
				xff = xff[i+1:]
			} else {
				xff = ""
			}
		}
	}
	client := peer
	for n := 0; n < maxXFFEntries && xff != ""; {
		i := len(xff) - 1
		for i >= 0 && xff[i] != ',' && xff[i] != '\n' {
			i--
		}
		// i is the separator before the rightmost entry, or -1
		entry := strings.Trim(xff[i+1:], " \t")
		xff = xff[:max(i, 0)]
		if entry == "" {
			continue
		}
		n++
		a, ok := parseXFFEntry(entry)
		if !ok {
			break
		}
		client = a
		if !isTrustedProxy(a, trusted) {
			break
		}
	}
	return client
}

// isTrustedProxy reports whether a is in one of the trusted prefixes.
func isTrustedProxy(a netip.Addr, trusted []netip.Prefix) bool {
	for _, p := range trusted {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// parseXFFEntry parses one trimmed, non-empty X-Forwarded-For entry in the
// forms realClientIP accepts, returning the address unmapped.
func parseXFFEntry(e string) (netip.Addr, bool) {
	host := e
	bracketed, withPort4 := false, false
	if e[0] == '[' {
		end := strings.IndexByte(e, ']')
		if end < 0 {
			return netip.Addr{}, false
		}
		host, bracketed = e[1:end], true
		if rest := e[end+1:]; rest != "" && (rest[0] != ':' || !validPort(rest[1:])) {
			return netip.Addr{}, false
		}
	} else if i := strings.IndexByte(e, ':'); i >= 0 && strings.IndexByte(e[i+1:], ':') < 0 {
		// One colon: IPv4 with a port. (Bare IPv6 has at least two.)
		if !validPort(e[i+1:]) {
			return netip.Addr{}, false
		}
		host, withPort4 = e[:i], true
	}
	a, err := netip.ParseAddr(host)
	if err != nil || a.Zone() != "" || (bracketed && !a.Is6()) || (withPort4 && !a.Is4()) {
		return netip.Addr{}, false
	}
	return a.Unmap(), true
}

// validPort reports whether p is a decimal port number, 0 to 65535.
func validPort(p string) bool {
	if p == "" || len(p) > 5 {
		return false
	}
	n := 0
	for i := 0; i < len(p); i++ {
		if p[i] < '0' || p[i] > '9' {
			return false
		}
		n = n*10 + int(p[i]-'0')
	}
	return n <= 65535
}
