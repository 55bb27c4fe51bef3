package httpapi

import (
	"net/netip"
	"strings"

	"github.com/gofiber/fiber/v2"
)

// clientIP is the address rate limits are keyed by.
func (s *Server) clientIP(c *fiber.Ctx) netip.Addr {
	peer, _ := netip.AddrFromSlice(c.Context().RemoteIP())
	return realClientIP(peer, string(c.Request().Header.Peek(fiber.HeaderXForwardedFor)), s.trustedProxies)
}

// realClientIP reads X-Forwarded-For only when the TCP peer is a trusted
// proxy, and then from the right: the first address that is not itself a
// trusted proxy is the client. A client cannot spoof it by sending the
// header itself, and an unparsable hop stops the walk at the last good one.
func realClientIP(peer netip.Addr, xff string, trusted []netip.Prefix) netip.Addr {
	peer = peer.Unmap()
	isTrusted := func(a netip.Addr) bool {
		for _, p := range trusted {
			if p.Contains(a) {
				return true
			}
		}
		return false
	}
	if !isTrusted(peer) || xff == "" {
		return peer
	}
	hops := strings.Split(xff, ",")
	client := peer
	for i := len(hops) - 1; i >= 0; i-- {
		a, err := netip.ParseAddr(strings.TrimSpace(hops[i]))
		if err != nil {
			break
		}
		client = a.Unmap()
		if !isTrusted(client) {
			break
		}
	}
	return client
}
