package main

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"time"

	"github.com/valyala/fasthttp"
)

// signClient sends POST /sign bodies. Each backend goroutine gets its own
// caller (reusing its request and response objects); the connection pool
// underneath is shared.
type signClient interface {
	caller() signCaller
	close()
}

type signCaller interface {
	// sign posts body and returns the status and the response body, valid
	// until the next call.
	sign(body []byte) (status int, resp []byte, err error)
	// do sends method to the sign URL with suffix appended ("" for POST
	// /sign, "/ID?wait_ms=N" for a resource), with body for POST and an
	// Idempotency-Key header when idemKey is not empty. It returns the
	// status, the response body (valid until the next call) and whether
	// the answer had Idempotent-Replayed: true.
	do(method, suffix string, body []byte, idemKey string) (status int, resp []byte, replayed bool, err error)
}

func newSignClient(kind, addr, apiKey string, conns int, timeout time.Duration) (signClient, error) {
	switch kind {
	case "fasthttp":
		hc := &fasthttp.HostClient{
			Addr:                          addr,
			MaxConns:                      conns,
			MaxIdleConnDuration:           time.Minute,
			ReadTimeout:                   timeout,
			WriteTimeout:                  10 * time.Second,
			MaxConnWaitTimeout:            timeout,
			NoDefaultUserAgentHeader:      true,
			DisableHeaderNamesNormalizing: true,
			DisablePathNormalizing:        true,
			ReadBufferSize:                4096,
			WriteBufferSize:               4096,
		}
		return &fastClient{hc: hc, url: "http://" + addr + "/sign", auth: "Bearer " + apiKey, timeout: timeout}, nil
	case "nethttp":
		tr := &http.Transport{
			DialContext:         (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: -1}).DialContext,
			MaxIdleConns:        conns,
			MaxIdleConnsPerHost: conns,
			MaxConnsPerHost:     conns,
			IdleConnTimeout:     time.Minute,
			DisableCompression:  true,
			ForceAttemptHTTP2:   false,
		}
		return &netClient{c: &http.Client{Transport: tr, Timeout: timeout}, tr: tr, url: "http://" + addr + "/sign", auth: "Bearer " + apiKey}, nil
	}
	return nil, fmt.Errorf("unknown -client %q (fasthttp or nethttp)", kind)
}

type fastClient struct {
	hc      *fasthttp.HostClient
	url     string
	auth    string
	timeout time.Duration
}

func (c *fastClient) caller() signCaller {
	req := fasthttp.AcquireRequest()
	req.SetRequestURI(c.url)
	req.Header.SetMethod(fasthttp.MethodPost)
	req.Header.SetContentType("application/json")
	req.Header.Set("Authorization", c.auth)
	return &fastCaller{c: c, req: req, resp: fasthttp.AcquireResponse()}
}

func (c *fastClient) close() { c.hc.CloseIdleConnections() }

type fastCaller struct {
	c    *fastClient
	req  *fasthttp.Request
	resp *fasthttp.Response
	req2 *fasthttp.Request // do's, so that sign's stays as it is
}

func (f *fastCaller) sign(body []byte) (int, []byte, error) {
	f.req.SetBodyRaw(body)
	if err := f.c.hc.DoTimeout(f.req, f.resp, f.c.timeout); err != nil {
		return 0, nil, err
	}
	return f.resp.StatusCode(), f.resp.Body(), nil
}

func (f *fastCaller) do(method, suffix string, body []byte, idemKey string) (int, []byte, bool, error) {
	if f.req2 == nil {
		f.req2 = fasthttp.AcquireRequest()
	}
	req := f.req2
	req.Reset()
	req.SetRequestURI(f.c.url + suffix)
	req.Header.SetMethod(method)
	req.Header.Set("Authorization", f.c.auth)
	if idemKey != "" {
		req.Header.Set("Idempotency-Key", idemKey)
	}
	if method == fasthttp.MethodPost {
		req.Header.SetContentType("application/json")
		req.SetBodyRaw(body)
	}
	if err := f.c.hc.DoTimeout(req, f.resp, f.c.timeout); err != nil {
		return 0, nil, false, err
	}
	return f.resp.StatusCode(), f.resp.Body(), string(f.resp.Header.Peek("Idempotent-Replayed")) == "true", nil
}

type netClient struct {
	c    *http.Client
	tr   *http.Transport
	url  string
	auth string
}

func (c *netClient) caller() signCaller { return &netCaller{c: c, buf: new(bytes.Buffer)} }

func (c *netClient) close() { c.tr.CloseIdleConnections() }

type netCaller struct {
	c   *netClient
	buf *bytes.Buffer
}

func (n *netCaller) sign(body []byte) (int, []byte, error) {
	req, err := http.NewRequest(http.MethodPost, n.c.url, bytes.NewReader(body))
	if err != nil {
		return 0, nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", n.c.auth)
	resp, err := n.c.c.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	n.buf.Reset()
	if _, err := io.Copy(n.buf, resp.Body); err != nil {
		return 0, nil, err
	}
	return resp.StatusCode, n.buf.Bytes(), nil
}

func (n *netCaller) do(method, suffix string, body []byte, idemKey string) (int, []byte, bool, error) {
	var rd io.Reader
	if method == http.MethodPost {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequest(method, n.c.url+suffix, rd)
	if err != nil {
		return 0, nil, false, err
	}
	if method == http.MethodPost {
		req.Header.Set("Content-Type", "application/json")
	}
	req.Header.Set("Authorization", n.c.auth)
	if idemKey != "" {
		req.Header.Set("Idempotency-Key", idemKey)
	}
	resp, err := n.c.c.Do(req)
	if err != nil {
		return 0, nil, false, err
	}
	defer resp.Body.Close()
	n.buf.Reset()
	if _, err := io.Copy(n.buf, resp.Body); err != nil {
		return 0, nil, false, err
	}
	return resp.StatusCode, n.buf.Bytes(), resp.Header.Get("Idempotent-Replayed") == "true", nil
}
