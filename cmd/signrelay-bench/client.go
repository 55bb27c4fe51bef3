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
}

func (f *fastCaller) sign(body []byte) (int, []byte, error) {
	f.req.SetBodyRaw(body)
	if err := f.c.hc.DoTimeout(f.req, f.resp, f.c.timeout); err != nil {
		return 0, nil, err
	}
	return f.resp.StatusCode(), f.resp.Body(), nil
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
