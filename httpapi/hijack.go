package httpapi

import (
	"net"
	"reflect"
)

// A key-holder connection outlives the handler that fasthttp hijacked it
// to (Server.KeepHijackedConns): once introduced, its read loop moves to a
// goroutine of its own and the handler returns, so that what fasthttp
// keeps while a hijack handler runs — the RequestCtx with its header
// storage (2.8 KiB), the contrib wrapper's copies of every header, and the
// handshake's grown goroutine stack — is given back, and an idle
// connection costs one shallow goroutine (docs/benchmarks.md, issue 11).
//
// That is safe only when the hijacked connection reads straight from the
// socket. fasthttp v1.52 hands the hijack handler its pooled bufio.Reader
// instead when the client sent bytes after the upgrade request (which
// RFC 6455 forbids, so only a broken or hostile client does), and recycles
// that reader as soon as the handler returns: a connection that kept
// reading through it would read another connection's bytes. So such a
// connection keeps its handler for its whole life, as before.

// What fasthttp v1.52's hijacked connection is called.
const (
	hijackConnType = "*fasthttp.hijackConn"
	hijackPkg      = "github.com/valyala/fasthttp"
)

// readsFromSocket reports whether nc, the connection fasthttp passed to a
// hijack handler, reads straight from the socket rather than through a
// buffer of fasthttp's. It inspects fasthttp's unexported hijackConn (its
// field r is the reader, Conn the socket) and says false for anything it
// does not recognise, so a fasthttp that changes this falls back to the
// handler-bound connection; TestHijackedConnReadsFromSocket notices.
func readsFromSocket(nc net.Conn) bool {
	v := reflect.ValueOf(nc)
	if v.Kind() != reflect.Pointer || v.IsNil() || v.Type().String() != hijackConnType || v.Elem().Type().PkgPath() != hijackPkg {
		return false
	}
	r, sock := v.Elem().FieldByName("r"), v.Elem().FieldByName("Conn")
	if !r.IsValid() || !sock.IsValid() || r.Kind() != reflect.Interface || sock.Kind() != reflect.Interface || r.IsNil() || sock.IsNil() {
		return false
	}
	r, sock = r.Elem(), sock.Elem()
	return r.Type() == sock.Type() && r.Kind() == reflect.Pointer && r.Pointer() == sock.Pointer()
}
