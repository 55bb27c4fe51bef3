package httpapi

import (
	"bufio"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"testing"

	"github.com/gofiber/fiber/v2"
	"github.com/valyala/fasthttp"
)

var xffProxies = []netip.Prefix{
	netip.MustParsePrefix("10.0.0.0/8"),
	netip.MustParsePrefix("127.0.0.1/32"),
	netip.MustParsePrefix("2001:db8:ffff::/48"),
}

// TestRealClientIPRules covers each rule of realClientIP. lines are the
// X-Forwarded-For header lines, each case is run both through joinXFF and
// with the lines joined by ", " by hand (one line).
func TestRealClientIPRules(t *testing.T) {
	cases := []struct {
		name    string
		peer    string
		lines   []string
		trusted []netip.Prefix
		want    string
	}{
		// which header lines are read
		{"HAProxy appends a line: spoofed first line ignored", "127.0.0.1", []string{"6.6.6.6", "1.2.3.4"}, xffProxies, "1.2.3.4"},
		{"spoofed first line of a trusted address", "127.0.0.1", []string{"10.9.9.9", "1.2.3.4"}, xffProxies, "1.2.3.4"},
		{"spoofed line, then a chain", "127.0.0.1", []string{"6.6.6.6, 7.7.7.7", "1.2.3.4, 10.0.0.2"}, xffProxies, "1.2.3.4"},
		{"client in first line, proxy hop in second", "127.0.0.1", []string{"1.2.3.4", "10.0.0.2"}, xffProxies, "1.2.3.4"},
		{"three lines", "127.0.0.1", []string{"6.6.6.6", "1.2.3.4", "10.0.0.2, 10.0.0.3"}, xffProxies, "1.2.3.4"},

		// who is believed
		{"no proxy trusted: header ignored", "127.0.0.1", []string{"1.2.3.4"}, nil, "127.0.0.1"},
		{"untrusted peer: header ignored", "8.8.8.8", []string{"1.2.3.4"}, xffProxies, "8.8.8.8"},
		{"untrusted peer: trusted-looking header ignored", "8.8.8.8", []string{"1.2.3.4", "10.0.0.2"}, xffProxies, "8.8.8.8"},
		{"untrusted mapped peer is unmapped", "::ffff:8.8.8.8", []string{"1.2.3.4"}, xffProxies, "8.8.8.8"},
		{"IPv4-mapped trusted peer", "::ffff:127.0.0.1", []string{"1.2.3.4"}, xffProxies, "1.2.3.4"},
		{"no header", "127.0.0.1", nil, xffProxies, "127.0.0.1"},
		{"empty header", "127.0.0.1", []string{""}, xffProxies, "127.0.0.1"},
		{"chain of trusted proxies", "127.0.0.1", []string{"1.2.3.4, 10.1.1.1, 10.2.2.2"}, xffProxies, "1.2.3.4"},
		{"all trusted: leftmost hop", "127.0.0.1", []string{"10.1.1.1, 10.2.2.2"}, xffProxies, "10.1.1.1"},
		{"all trusted over lines: leftmost hop", "127.0.0.1", []string{"10.1.1.1", "10.2.2.2"}, xffProxies, "10.1.1.1"},
		{"IPv6 proxy chain", "2001:db8:ffff::1", []string{"2001:db8:1::5, 2001:db8:ffff::2"}, xffProxies, "2001:db8:1::5"},

		// entry forms
		{"IPv4 with port", "127.0.0.1", []string{"1.2.3.4:5678"}, xffProxies, "1.2.3.4"},
		{"IPv4 with port 0", "127.0.0.1", []string{"1.2.3.4:0"}, xffProxies, "1.2.3.4"},
		{"IPv4 with port 65535", "127.0.0.1", []string{"1.2.3.4:65535"}, xffProxies, "1.2.3.4"},
		{"trusted hop with port", "127.0.0.1", []string{"1.2.3.4, 10.0.0.2:8080"}, xffProxies, "1.2.3.4"},
		{"bare IPv6", "127.0.0.1", []string{"2001:db8::1"}, xffProxies, "2001:db8::1"},
		{"upper-case IPv6", "127.0.0.1", []string{"2001:DB8::1"}, xffProxies, "2001:db8::1"},
		{"bracketed IPv6", "127.0.0.1", []string{"[2001:db8::1]"}, xffProxies, "2001:db8::1"},
		{"bracketed IPv6 with port", "127.0.0.1", []string{"[2001:db8::1]:443"}, xffProxies, "2001:db8::1"},
		{"trusted IPv6 hop with port", "127.0.0.1", []string{"1.2.3.4, [2001:db8:ffff::9]:443"}, xffProxies, "1.2.3.4"},
		{"IPv4-mapped client", "127.0.0.1", []string{"::ffff:1.2.3.4"}, xffProxies, "1.2.3.4"},
		{"bracketed IPv4-mapped client with port", "127.0.0.1", []string{"[::ffff:1.2.3.4]:80"}, xffProxies, "1.2.3.4"},
		{"IPv4-mapped trusted hop", "127.0.0.1", []string{"1.2.3.4, ::ffff:10.0.0.2"}, xffProxies, "1.2.3.4"},
		{"spaces and tabs trimmed", "127.0.0.1", []string{" \t1.2.3.4 \t,\t 10.0.0.2\t"}, xffProxies, "1.2.3.4"},

		// empty entries are skipped
		{"empty entries skipped", "127.0.0.1", []string{"1.2.3.4,, ,\t,10.0.0.2"}, xffProxies, "1.2.3.4"},
		{"trailing comma", "127.0.0.1", []string{"1.2.3.4,"}, xffProxies, "1.2.3.4"},
		{"leading comma", "127.0.0.1", []string{",1.2.3.4"}, xffProxies, "1.2.3.4"},
		{"empty line skipped", "127.0.0.1", []string{"1.2.3.4", "", "10.0.0.2"}, xffProxies, "1.2.3.4"},
		{"only commas", "127.0.0.1", []string{",,,", " , "}, xffProxies, "127.0.0.1"},

		// garbage stops the walk at the last good address
		{"garbage hop stops the walk", "127.0.0.1", []string{"1.2.3.4, nonsense, 10.1.1.1"}, xffProxies, "10.1.1.1"},
		{"garbage rightmost: the peer", "127.0.0.1", []string{"1.2.3.4, nonsense"}, xffProxies, "127.0.0.1"},
		{"garbage line after the client", "127.0.0.1", []string{"1.2.3.4", "unknown"}, xffProxies, "127.0.0.1"},
		{"two addresses without a comma", "127.0.0.1", []string{"1.2.3.4 5.6.7.8"}, xffProxies, "127.0.0.1"},
		{"Forwarded syntax", "127.0.0.1", []string{"for=1.2.3.4"}, xffProxies, "127.0.0.1"},
		{"obfuscated identifier", "127.0.0.1", []string{"_hidden, 10.0.0.2"}, xffProxies, "10.0.0.2"},
		{"IPv4 leading zero", "127.0.0.1", []string{"01.2.3.4"}, xffProxies, "127.0.0.1"},
		{"empty port", "127.0.0.1", []string{"1.2.3.4:"}, xffProxies, "127.0.0.1"},
		{"port too big", "127.0.0.1", []string{"1.2.3.4:65536"}, xffProxies, "127.0.0.1"},
		{"port too long", "127.0.0.1", []string{"1.2.3.4:000080"}, xffProxies, "127.0.0.1"},
		{"signed port", "127.0.0.1", []string{"1.2.3.4:+80"}, xffProxies, "127.0.0.1"},
		{"port name", "127.0.0.1", []string{"1.2.3.4:http"}, xffProxies, "127.0.0.1"},
		{"two ports", "127.0.0.1", []string{"1.2.3.4:80:80"}, xffProxies, "127.0.0.1"},
		{"bracketed IPv4", "127.0.0.1", []string{"[1.2.3.4]"}, xffProxies, "127.0.0.1"},
		{"bracketed IPv4 with port", "127.0.0.1", []string{"[1.2.3.4]:80"}, xffProxies, "127.0.0.1"},
		{"unclosed bracket", "127.0.0.1", []string{"[2001:db8::1"}, xffProxies, "127.0.0.1"},
		{"junk after bracket", "127.0.0.1", []string{"[2001:db8::1]x"}, xffProxies, "127.0.0.1"},
		{"empty port after bracket", "127.0.0.1", []string{"[2001:db8::1]:"}, xffProxies, "127.0.0.1"},
		{"empty brackets", "127.0.0.1", []string{"[]"}, xffProxies, "127.0.0.1"},
		{"IPv6 zone refused", "127.0.0.1", []string{"1.2.3.4, fe80::1%eth0"}, xffProxies, "127.0.0.1"},
		{"bracketed IPv6 zone refused", "127.0.0.1", []string{"[fe80::1%25eth0]:443"}, xffProxies, "127.0.0.1"},
		{"CIDR refused", "127.0.0.1", []string{"1.2.3.0/24"}, xffProxies, "127.0.0.1"},
	}
	for _, tc := range cases {
		peer := netip.MustParseAddr(tc.peer)
		var lines [][]byte
		for _, l := range tc.lines {
			lines = append(lines, []byte(l))
		}
		if got := realClientIP(peer, joinXFF(lines), tc.trusted); got.String() != tc.want {
			t.Errorf("%s: lines %q: got %s, want %s", tc.name, tc.lines, got, tc.want)
		}
		one := strings.Join(tc.lines, ", ")
		if got := realClientIP(peer, one, tc.trusted); got.String() != tc.want {
			t.Errorf("%s: one line %q: got %s, want %s", tc.name, one, got, tc.want)
		}
	}
}

// TestRealClientIPBounds checks the entry and byte caps.
func TestRealClientIPBounds(t *testing.T) {
	peer := netip.MustParseAddr("127.0.0.1")
	hops := func(n int) []string {
		var h []string
		for i := 0; i < n; i++ {
			h = append(h, "10.0."+strconv.Itoa(i/250)+"."+strconv.Itoa(1+i%250))
		}
		return h
	}

	// 63 trusted hops and the client: 64 entries, all examined.
	h := hops(maxXFFEntries - 1)
	if got := realClientIP(peer, "1.2.3.4, "+strings.Join(h, ", "), xffProxies); got.String() != "1.2.3.4" {
		t.Errorf("client behind %d hops: got %s", len(h), got)
	}
	// 100 trusted hops: the walk ends at the 64th from the right.
	h = hops(100)
	if got, want := realClientIP(peer, "1.2.3.4, "+strings.Join(h, ", "), xffProxies).String(), h[len(h)-maxXFFEntries]; got != want {
		t.Errorf("client behind %d hops: got %s, want the %dth hop %s", len(h), got, maxXFFEntries, want)
	}
	// Empty entries do not count towards the entry cap.
	if got := realClientIP(peer, "1.2.3.4"+strings.Repeat(",", 500)+"10.0.0.2", xffProxies); got.String() != "1.2.3.4" {
		t.Errorf("client behind empty entries: got %s", got)
	}
	// A huge spoofed part on the left is never read.
	if got := realClientIP(peer, strings.Repeat("9", 1<<20)+",1.2.3.4", xffProxies); got.String() != "1.2.3.4" {
		t.Errorf("huge left part: got %s", got)
	}
	if got := realClientIP(peer, strings.Repeat("6.6.6.6,", 1<<17)+"1.2.3.4", xffProxies); got.String() != "1.2.3.4" {
		t.Errorf("many left entries: got %s", got)
	}
	// The byte window starting inside "11.2.3.4" must not read "1.2.3.4".
	tail := ",10.0.0.2"
	pad := strings.Repeat(",", maxXFFBytes-len("1.2.3.4")-len(tail))
	cut := "11.2.3.4" + pad + tail
	if len(cut) != maxXFFBytes+1 {
		t.Fatalf("test header is %d bytes", len(cut))
	}
	if got := realClientIP(peer, cut, xffProxies); got.String() != "10.0.0.2" {
		t.Errorf("entry cut by the window: got %s, want 10.0.0.2", got)
	}
	// ... but one that starts exactly at the window is read.
	whole := "6.6.6.6," + "1.2.3.4" + pad + tail
	if got := realClientIP(peer, whole, xffProxies); got.String() != "1.2.3.4" {
		t.Errorf("entry at the window start: got %s, want 1.2.3.4", got)
	}
	// The same through joinXFF, with the cut inside an earlier line.
	lines := [][]byte{[]byte("11.2.3.4"), []byte(pad[1:]), []byte(tail[1:])}
	if j := joinXFF(lines); len(j) != maxXFFBytes+1 {
		t.Errorf("joinXFF kept %d bytes, want %d", len(j), maxXFFBytes+1)
	}
	if got := realClientIP(peer, joinXFF(lines), xffProxies); got.String() != "10.0.0.2" {
		t.Errorf("lines, entry cut by the window: got %s, want 10.0.0.2", got)
	}
	lines = [][]byte{[]byte("6.6.6.6"), []byte("1.2.3.4"), []byte(pad[1:]), []byte(tail[1:])}
	if got := realClientIP(peer, joinXFF(lines), xffProxies); got.String() != "1.2.3.4" {
		t.Errorf("lines, entry at the window start: got %s, want 1.2.3.4", got)
	}
}

func TestJoinXFF(t *testing.T) {
	b := func(s ...string) [][]byte {
		var l [][]byte
		for _, x := range s {
			l = append(l, []byte(x))
		}
		return l
	}
	for _, tc := range []struct {
		lines [][]byte
		want  string
	}{
		{nil, ""},
		{b(""), ""},
		{b("1.2.3.4"), "1.2.3.4"},
		{b("6.6.6.6", "1.2.3.4, 10.0.0.2"), "6.6.6.6\n1.2.3.4, 10.0.0.2"},
		{b("a", "", "c"), "a\n\nc"},
	} {
		if got := joinXFF(tc.lines); got != tc.want {
			t.Errorf("joinXFF(%q) = %q, want %q", tc.lines, got, tc.want)
		}
	}
	// Bounded, keeping the right end, however many or long the lines.
	many := make([][]byte, 100000)
	for i := range many {
		many[i] = []byte("6.6.6.6")
	}
	many = append(many, []byte("1.2.3.4"))
	long := b(strings.Repeat("6", 1<<20), "1.2.3.4")
	longOne := b(strings.Repeat("6.6.6.6,", 1<<17) + "1.2.3.4")
	for _, lines := range [][][]byte{many, long, longOne} {
		got := joinXFF(lines)
		if len(got) != maxXFFBytes+1 || !strings.HasSuffix(got, "1.2.3.4") {
			t.Errorf("joinXFF of %d lines: %d bytes ending %q", len(lines), len(got), got[max(0, len(got)-10):])
		}
		if ip := realClientIP(netip.MustParseAddr("127.0.0.1"), got, xffProxies); ip.String() != "1.2.3.4" {
			t.Errorf("client of %d lines: %s", len(lines), ip)
		}
	}
}

// TestClientIPHeaderLines reads a request off the wire, so that fasthttp's
// own handling of repeated (and differently cased) header lines is covered.
func TestClientIPHeaderLines(t *testing.T) {
	s := &Server{trustedProxies: xffProxies}
	app := fiber.New()
	for _, tc := range []struct {
		name, peer, headers, want string
	}{
		{"two lines", "127.0.0.1", "X-Forwarded-For: 6.6.6.6\r\nX-Forwarded-For: 1.2.3.4\r\n", "1.2.3.4"},
		{"lines cased differently", "127.0.0.1", "X-Forwarded-For: 6.6.6.6\r\nx-forwarded-for: 1.2.3.4:5678\r\n", "1.2.3.4"},
		{"lines apart", "10.0.0.1", "X-Forwarded-For: 6.6.6.6\r\nAccept: */*\r\nX-Forwarded-For: [2001:db8::1]:443, 10.0.0.2\r\n", "2001:db8::1"},
		{"one line", "127.0.0.1", "X-Forwarded-For: 6.6.6.6, 1.2.3.4\r\n", "1.2.3.4"},
		{"no header", "127.0.0.1", "", "127.0.0.1"},
		{"untrusted peer", "8.8.8.8", "X-Forwarded-For: 1.2.3.4\r\nX-Forwarded-For: 10.0.0.2\r\n", "8.8.8.8"},
		{"IPv6 peer", "2001:db8:ffff::1", "X-Forwarded-For: 1.2.3.4\r\n", "1.2.3.4"},
		{"untrusted IPv6 peer", "2001:db8:1::1", "X-Forwarded-For: 1.2.3.4\r\n", "2001:db8:1::1"},
	} {
		var req fasthttp.Request
		raw := "GET /ws HTTP/1.1\r\nHost: relay\r\n" + tc.headers + "\r\n"
		if err := req.Read(bufio.NewReader(strings.NewReader(raw))); err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		var fctx fasthttp.RequestCtx
		fctx.Init(&req, &net.TCPAddr{IP: net.ParseIP(tc.peer), Port: 40000}, nil)
		c := app.AcquireCtx(&fctx)
		if got := s.clientIP(c); got.String() != tc.want {
			t.Errorf("%s: got %s, want %s", tc.name, got, tc.want)
		}
		app.ReleaseCtx(c)
	}
}

func TestRateKey(t *testing.T) {
	for _, tc := range []struct{ addr, want string }{
		{"1.2.3.4", "1.2.3.4"},
		{"::ffff:1.2.3.4", "1.2.3.4"},
		{"2001:db8:1:2::1", "2001:db8:1:2::/64"},
		{"2001:db8:1:2:aaaa:bbbb:cccc:dddd", "2001:db8:1:2::/64"},
		{"2001:db8:1:3::1", "2001:db8:1:3::/64"},
		{"fe80::1%eth0", "fe80::/64"},
		{"::1.2.3.4", "::/64"}, // IPv4-compatible is IPv6, not 1.2.3.4
		{"::1", "::/64"},
	} {
		if got := rateKey(netip.MustParseAddr(tc.addr)); got != tc.want {
			t.Errorf("rateKey(%s) = %q, want %q", tc.addr, got, tc.want)
		}
	}
	if got := rateKey(netip.Addr{}); got == "" {
		t.Error("rateKey of the zero Addr is empty")
	}
	// Clients of one /64 behind a proxy share a bucket; the next /64 does not.
	peer := netip.MustParseAddr("10.0.0.1")
	a := rateKey(realClientIP(peer, "[2001:db8:5:6::1]:1000, 10.0.0.2", xffProxies))
	b := rateKey(realClientIP(peer, "2001:db8:5:6:ffff:ffff:ffff:ffff", xffProxies))
	c := rateKey(realClientIP(peer, "2001:db8:5:7::1", xffProxies))
	if a != b || a == c {
		t.Errorf("rate keys %q %q %q: want the first two equal, the third different", a, b, c)
	}
}

// refParseXFF is a reference parser for one entry, built on the standard
// library's own address and address:port parsers.
func refParseXFF(e string) (netip.Addr, bool) {
	e = strings.Trim(e, " \t")
	if a, err := netip.ParseAddr(e); err == nil && a.Zone() == "" {
		return a.Unmap(), true
	}
	if ap, err := netip.ParseAddrPort(e); err == nil && ap.Addr().Zone() == "" {
		return ap.Addr().Unmap(), true
	}
	if len(e) > 2 && e[0] == '[' && e[len(e)-1] == ']' {
		if a, err := netip.ParseAddr(e[1 : len(e)-1]); err == nil && a.Is6() && a.Zone() == "" {
			return a.Unmap(), true
		}
	}
	return netip.Addr{}, false
}

func FuzzRealClientIP(f *testing.F) {
	v4 := func(s string) []byte { a := netip.MustParseAddr(s).As4(); return a[:] }
	v6 := func(s string) []byte { a := netip.MustParseAddr(s).As16(); return a[:] }
	f.Add(v4("127.0.0.1"), "6.6.6.6\n1.2.3.4", "127.0.0.0/8")
	f.Add(v4("10.0.0.1"), "6.6.6.6, 7.7.7.7\n1.2.3.4, 10.0.0.2", "10.0.0.0/8")
	f.Add(v4("10.0.0.1"), "1.2.3.4:5678, 10.0.0.2:80", "10.0.0.0/8")
	f.Add(v4("10.0.0.1"), "[2001:db8::1]:443,[2001:db8::2], 2001:db8::3", "10.0.0.0/8")
	f.Add(v6("::ffff:10.0.0.1"), "::ffff:1.2.3.4, [::ffff:10.0.0.9]:1", "10.0.0.0/8")
	f.Add(v6("2001:db8:ffff::1"), "2001:db8:1::5, 2001:db8:ffff::2", "2001:db8:ffff::/48")
	f.Add(v4("8.8.8.8"), "1.2.3.4", "10.0.0.0/8")
	f.Add(v4("10.0.0.1"), "10.1.1.1, 10.2.2.2\n10.3.3.3", "10.0.0.0/8")
	f.Add(v4("10.0.0.1"), "1.2.3.4, nonsense, 10.1.1.1", "10.0.0.0/8")
	f.Add(v4("10.0.0.1"), "1.2.3.4,, \t,\n\n10.0.0.2,", "10.0.0.0/8")
	f.Add(v4("10.0.0.1"), "fe80::1%eth0, [fe80::1%25x]:1, [1.2.3.4]:80, 1.2.3.4:99999", "10.0.0.0/8")
	f.Add(v4("10.0.0.1"), "1.2.3.4", "10.0.0.1")
	f.Add([]byte{}, "1.2.3.4", "0.0.0.0/0")
	f.Add(v4("10.0.0.1"), "11.2.3.4"+strings.Repeat(",", maxXFFBytes)+"10.0.0.2", "10.0.0.0/8")

	f.Fuzz(func(t *testing.T, peerBytes []byte, header, cidr string) {
		peer, _ := netip.AddrFromSlice(peerBytes)
		var trusted []netip.Prefix
		if p, err := netip.ParsePrefix(cidr); err == nil {
			trusted = []netip.Prefix{p.Masked()}
		} else if a, err := netip.ParseAddr(cidr); err == nil {
			a = a.Unmap().WithZone("")
			trusted = []netip.Prefix{netip.PrefixFrom(a, a.BitLen())}
		}
		var lines [][]byte
		if header != "" {
			for _, l := range strings.Split(header, "\n") {
				lines = append(lines, []byte(l))
			}
		}

		got := realClientIP(peer, joinXFF(lines), trusted)

		peer = peer.Unmap()
		if !isTrustedProxy(peer, trusted) {
			if got != peer {
				t.Fatalf("untrusted peer %s: got %s", peer, got)
			}
			return
		}
		if got == peer {
			return
		}
		if got.Zone() != "" || got.Is4In6() {
			t.Fatalf("got %s, with a zone or mapped", got)
		}
		// got must be some entry of the header, and every entry to its
		// right must be empty or a trusted proxy.
		entries := strings.FieldsFunc(header, func(r rune) bool { return r == ',' || r == '\n' })
		ok := false
		for i := len(entries) - 1; i >= 0 && !ok; i-- {
			a, parsed := refParseXFF(entries[i])
			if parsed && a == got {
				ok = true
				break
			}
			if strings.Trim(entries[i], " \t") == "" {
				continue
			}
			if !parsed || !isTrustedProxy(a, trusted) {
				break // got is not to the left of this
			}
		}
		if !ok {
			t.Fatalf("peer %s, header %q, trusted %v: got %s, which is not the peer nor an entry with only trusted proxies to its right", peer, header, trusted, got)
		}

		// Each entry parseXFFEntry accepts, the standard library reads the same.
		for _, e := range entries {
			if e = strings.Trim(e, " \t"); e == "" {
				continue
			}
			if a, ok := parseXFFEntry(e); ok {
				if r, rok := refParseXFF(e); !rok || r != a {
					t.Fatalf("entry %q: parseXFFEntry %s, reference %s %v", e, a, r, rok)
				}
			}
		}
	})
}

// BenchmarkRealClientIP is a typical request through two proxies: the
// client's address and the first proxy's, as the second proxy sends them.
func BenchmarkRealClientIP(b *testing.B) {
	peer := netip.MustParseAddr("10.0.0.1")
	b.Run("string", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if !realClientIP(peer, "203.0.113.7, 10.0.0.2", xffProxies).IsValid() {
				b.Fatal("no address")
			}
		}
	})
	b.Run("lines", func(b *testing.B) {
		lines := [][]byte{[]byte("203.0.113.7"), []byte("10.0.0.2")}
		b.ReportAllocs()
		for b.Loop() {
			if !realClientIP(peer, joinXFF(lines), xffProxies).IsValid() {
				b.Fatal("no address")
			}
		}
	})
}
