package tests

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"io"
	"net/http"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/getkin/kin-openapi/openapi3filter"
	"github.com/getkin/kin-openapi/routers"
	"github.com/getkin/kin-openapi/routers/gorillamux"

	"github.com/signrelay/signrelay/api"
	"github.com/signrelay/signrelay/config"
	"github.com/signrelay/signrelay/protocol"
)

// api/openapi.yaml against the relay: the document is valid OpenAPI 3.1,
// the relay serves it as embedded, and real answers of a running relay (and
// the requests that got them) validate against it. The answers are checked
// strictly: a status the operation does not list, a field the schema does
// not declare, or a required field or header that is missing fails.

// openAPISpec loads and validates the embedded document once.
var openAPISpec = sync.OnceValues(func() (*openapi3.T, error) {
	loader := openapi3.NewLoader()
	doc, err := loader.LoadFromData(api.OpenAPI)
	if err != nil {
		return nil, fmt.Errorf("load: %w", err)
	}
	if err := doc.Validate(loader.Context); err != nil {
		return nil, fmt.Errorf("validate: %w", err)
	}
	return doc, nil
})

func loadOpenAPI(t *testing.T) *openapi3.T {
	t.Helper()
	doc, err := openAPISpec()
	if err != nil {
		t.Fatal(err)
	}
	return doc
}

func TestOpenAPIDocument(t *testing.T) {
	doc := loadOpenAPI(t)
	if !doc.IsOpenAPI31OrLater() || doc.OpenAPI != "3.1.0" {
		t.Fatalf("openapi %q, want 3.1.0", doc.OpenAPI)
	}
	for _, p := range []string{"/sign", "/sign/{request_id}", "/healthz", "/livez", "/readyz", "/openapi.yaml"} {
		if doc.Paths.Value(p) == nil {
			t.Errorf("no path %s", p)
		}
	}
	if s := doc.Components.SecuritySchemes["bearerAuth"]; s == nil || s.Value.Type != "http" || s.Value.Scheme != "bearer" {
		t.Errorf("no bearer security scheme")
	}
	// 3.1 forms only: nullable is an unknown keyword there.
	if bytes.Contains(api.OpenAPI, []byte("nullable:")) {
		t.Error("the document uses nullable; OpenAPI 3.1 spells it type: [T, \"null\"]")
	}

	r := startRelay(t, nil)
	res, err := r.client.Get(r.base + "/openapi.yaml")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(res.Body)
	res.Body.Close()
	if res.StatusCode != http.StatusOK || res.Header.Get("Content-Type") != "application/yaml" {
		t.Fatalf("GET /openapi.yaml: %d %q", res.StatusCode, res.Header.Get("Content-Type"))
	}
	if !bytes.Equal(body, api.OpenAPI) {
		t.Fatal("GET /openapi.yaml is not the embedded document")
	}
}

// TestOpenAPIErrorCodes holds the spec's list of error codes to the
// relay's: every code constant in httpapi/errors.go is in ErrorCode, and
// every code there is one the relay can send.
func TestOpenAPIErrorCodes(t *testing.T) {
	doc := loadOpenAPI(t)
	var spec []string
	for _, v := range doc.Components.Schemas["ErrorCode"].Value.Enum {
		spec = append(spec, v.(string))
	}
	f, err := parser.ParseFile(token.NewFileSet(), "../httpapi/errors.go", nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	code := map[string]bool{
		// Fiber's own errors, named by errorHandler from their status text.
		"request_timeout":                 true,
		"request_header_fields_too_large": true,
		"bad_gateway":                     true,
	}
	for _, d := range f.Decls {
		g, ok := d.(*ast.GenDecl)
		if !ok || g.Tok != token.CONST {
			continue
		}
		for _, s := range g.Specs {
			vs := s.(*ast.ValueSpec)
			for i, n := range vs.Names {
				if !strings.HasPrefix(n.Name, "code") || i >= len(vs.Values) {
					continue
				}
				if lit, ok := vs.Values[i].(*ast.BasicLit); ok && lit.Kind == token.STRING {
					v, _ := strconv.Unquote(lit.Value)
					code[v] = true
				}
			}
		}
	}
	// Logged, never sent: a backend that went away gets no answer.
	delete(code, "requester_gone")
	var relay []string
	for c := range code {
		relay = append(relay, c)
	}
	sort.Strings(relay)
	sort.Strings(spec)
	if !slices.Equal(relay, spec) {
		t.Fatalf("error codes of httpapi/errors.go %v,\nof the OpenAPI ErrorCode %v", relay, spec)
	}
}

// oas checks exchanges with a relay against the document and records
// which documented answers were seen.
type oas struct {
	t      *testing.T
	doc    *openapi3.T
	router routers.Router
	r      *relay

	mu   sync.Mutex
	seen map[string]bool // "METHOD /path status"
}

func newOAS(t *testing.T, r *relay) *oas {
	doc := loadOpenAPI(t)
	router, err := gorillamux.NewRouter(doc)
	if err != nil {
		t.Fatal(err)
	}
	return &oas{t: t, doc: doc, router: router, r: r, seen: map[string]bool{}}
}

func (o *oas) options() *openapi3filter.Options {
	return &openapi3filter.Options{
		IncludeResponseStatus: true,
		MultiError:            true,
		AuthenticationFunc: func(_ context.Context, in *openapi3filter.AuthenticationInput) error {
			h := in.RequestValidationInput.Request.Header.Get("Authorization")
			if len(h) <= len("bearer ") || !strings.EqualFold(h[:len("bearer ")], "bearer ") {
				return errors.New("no bearer token")
			}
			return nil
		},
	}
}

// exchange is one request, sent and checked.
type exchange struct {
	method, path, apiKey string
	body                 []byte
	header               map[string]string
	// invalid says the request breaks the document on purpose: the
	// request validator must refuse it too.
	invalid bool
}

// do validates the request, sends it, validates the answer and checks its
// status and error code ("" for none).
func (o *oas) do(t *testing.T, x exchange, status int, code string) httpResp {
	t.Helper()
	route, params, err := o.router.FindRoute(o.newRequest(x))
	if err != nil {
		t.Fatalf("%s %s: no operation in the document: %v", x.method, x.path, err)
	}
	in := &openapi3filter.RequestValidationInput{Request: o.newRequest(x), PathParams: params, Route: route, Options: o.options()}
	err = openapi3filter.ValidateRequest(context.Background(), in)
	switch {
	case x.invalid && err == nil:
		t.Errorf("%s %s: the document accepts a request the relay refuses", x.method, x.path)
	case !x.invalid && err != nil:
		t.Errorf("%s %s: request does not match the document: %v", x.method, x.path, err)
	}
	res := o.send(t, o.newRequest(x))
	o.check(t, in, res)
	o.saw(route, res.Status)
	got := ""
	if res.Status >= 400 {
		got = res.errCode()
	}
	if res.Status != status || got != code {
		t.Fatalf("%s %s: got %d %q, want %d %q: %s", x.method, x.path, res.Status, got, status, code, res.Raw)
	}
	return res
}

// asyncResult is the outcome of doAsync.
type asyncResult struct {
	res  httpResp
	errs []error
}

// doAsync sends x in the background, checked as do checks it; await
// reports what it found. It never touches t off the test goroutine.
func (o *oas) doAsync(x exchange) <-chan asyncResult {
	ch := make(chan asyncResult, 1)
	go func() {
		var out asyncResult
		fail := func(err error) { out.errs = append(out.errs, fmt.Errorf("%s %s: %w", x.method, x.path, err)) }
		req := o.newRequest(x)
		route, params, err := o.router.FindRoute(req)
		if err != nil {
			fail(err)
			ch <- out
			return
		}
		in := &openapi3filter.RequestValidationInput{Request: req, PathParams: params, Route: route, Options: o.options()}
		if err := openapi3filter.ValidateRequest(context.Background(), in); err != nil {
			fail(fmt.Errorf("request does not match the document: %w", err))
		}
		res, err := o.roundTrip(o.newRequest(x))
		if err != nil {
			fail(err)
			ch <- out
			return
		}
		if err := o.validate(in, res); err != nil {
			fail(err)
		}
		o.saw(route, res.Status)
		out.res = res
		ch <- out
	}()
	return ch
}

// await returns the answer of doAsync and fails the test on what it found.
func (o *oas) await(t *testing.T, ch <-chan asyncResult) httpResp {
	t.Helper()
	r := recv(t, ch)
	for _, err := range r.errs {
		t.Error(err)
	}
	if r.res.Status == 0 {
		t.FailNow()
	}
	return r.res
}

func (o *oas) saw(route *routers.Route, status int) {
	o.mu.Lock()
	o.seen[fmt.Sprintf("%s %s %d", strings.ToUpper(route.Method), route.Path, status)] = true
	o.mu.Unlock()
}

func (o *oas) newRequest(x exchange) *http.Request {
	var body io.Reader
	if x.body != nil {
		body = bytes.NewReader(x.body)
	}
	req, _ := http.NewRequest(x.method, o.r.base+x.path, body)
	if x.body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if x.apiKey != "" {
		req.Header.Set("Authorization", "Bearer "+x.apiKey)
	}
	for k, v := range x.header {
		req.Header.Set(k, v)
	}
	return req
}

func (o *oas) send(t *testing.T, req *http.Request) httpResp {
	t.Helper()
	res, err := o.roundTrip(req)
	if err != nil {
		t.Fatalf("%s %s: %v", req.Method, req.URL.Path, err)
	}
	return res
}

func (o *oas) roundTrip(req *http.Request) (httpResp, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*wait)
	defer cancel()
	res, err := o.r.client.Do(req.WithContext(ctx))
	if err != nil {
		return httpResp{}, err
	}
	defer res.Body.Close()
	raw, _ := io.ReadAll(res.Body)
	out := httpResp{Status: res.StatusCode, Header: res.Header, Raw: string(raw)}
	if strings.HasPrefix(res.Header.Get("Content-Type"), "application/json") {
		if err := json.Unmarshal(raw, &out.Body); err != nil {
			return out, fmt.Errorf("answer is not JSON: %s", raw)
		}
	}
	return out, nil
}

func (o *oas) check(t *testing.T, in *openapi3filter.RequestValidationInput, res httpResp) {
	t.Helper()
	if err := o.validate(in, res); err != nil {
		t.Errorf("%s %s: %v", in.Request.Method, in.Request.URL.Path, err)
	}
}

// validate checks an answer against the operation of in: status, headers,
// body, and no field the schema does not declare.
func (o *oas) validate(in *openapi3filter.RequestValidationInput, res httpResp) error {
	return validateAnswer(in, o.options(), res.Status, res.Header, []byte(res.Raw))
}

func validateAnswer(in *openapi3filter.RequestValidationInput, opts *openapi3filter.Options, status int, h http.Header, raw []byte) error {
	err := openapi3filter.ValidateResponse(context.Background(), &openapi3filter.ResponseValidationInput{
		RequestValidationInput: in, Status: status, Header: h,
		Body: io.NopCloser(bytes.NewReader(raw)), Options: opts,
	})
	if err != nil {
		return fmt.Errorf("answer %d does not match the document: %w\n%s", status, err, raw)
	}
	resp := in.Route.Operation.Responses.Status(status)
	mt := resp.Value.Content.Get(h.Get("Content-Type"))
	if mt == nil || mt.Schema == nil || !strings.HasPrefix(h.Get("Content-Type"), "application/json") {
		return nil
	}
	var v any
	if err := json.Unmarshal(raw, &v); err != nil {
		return err
	}
	if extra := undeclared([]*openapi3.Schema{mt.Schema.Value}, v, ""); len(extra) > 0 {
		return fmt.Errorf("answer %d has fields the document does not declare: %v\n%s", status, extra, raw)
	}
	return nil
}

// undeclared lists the object fields of v, by path, that no schema of
// schemas declares (in properties, directly or through allOf, anyOf,
// oneOf, then and else). The document lets clients ignore fields they do
// not know, so it cannot say additionalProperties: false; this test holds
// the relay to sending none.
func undeclared(schemas []*openapi3.Schema, v any, path string) []string {
	obj, ok := v.(map[string]any)
	if !ok {
		return nil
	}
	props := map[string][]*openapi3.Schema{}
	var collect func(s *openapi3.Schema, depth int)
	collect = func(s *openapi3.Schema, depth int) {
		if s == nil || depth > 16 {
			return
		}
		for k, p := range s.Properties {
			props[k] = append(props[k], p.Value)
		}
		for _, group := range []openapi3.SchemaRefs{s.AllOf, s.AnyOf, s.OneOf} {
			for _, sub := range group {
				collect(sub.Value, depth+1)
			}
		}
		for _, sub := range []*openapi3.SchemaRef{s.Then, s.Else} {
			if sub != nil {
				collect(sub.Value, depth+1)
			}
		}
	}
	for _, s := range schemas {
		collect(s, 0)
	}
	var out []string
	for k, val := range obj {
		subs, ok := props[k]
		if !ok {
			out = append(out, path+"/"+k)
			continue
		}
		out = append(out, undeclared(subs, val, path+"/"+k)...)
	}
	sort.Strings(out)
	return out
}

// methodNotAllowed checks an answer to a method a path does not route: the
// document has no operation for it (the router says so) and the answer is
// components.responses.MethodNotAllowed.
func (o *oas) methodNotAllowed(t *testing.T, method, path, allow string) {
	t.Helper()
	req, _ := http.NewRequest(method, o.r.base+path, nil)
	req.Header.Set("Authorization", "Bearer "+testAPIKey)
	if _, _, err := o.router.FindRoute(req); !errors.Is(err, routers.ErrMethodNotAllowed) {
		t.Errorf("%s %s: router says %v, want method not allowed", method, path, err)
	}
	res := o.send(t, req)
	op := openapi3.NewOperation()
	op.Responses = openapi3.NewResponses()
	op.Responses.Delete("default")
	op.Responses.Set("405", o.doc.Components.Responses["MethodNotAllowed"])
	in := &openapi3filter.RequestValidationInput{Request: req, Route: &routers.Route{Spec: o.doc, Path: path, Method: method, Operation: op}}
	if err := o.validate(in, res); err != nil {
		t.Errorf("%s %s: %v", method, path, err)
	}
	if res.Status != http.StatusMethodNotAllowed || res.errCode() != "method_not_allowed" || res.Header.Get("Allow") != allow {
		t.Fatalf("%s %s: %d %q Allow %q: %s", method, path, res.Status, res.errCode(), res.Header.Get("Allow"), res.Raw)
	}
}

// notExercised are the documented answers these tests do not provoke.
// Every other answer the document lists must be seen, so that a status
// added to the document comes with a check against the relay.
var notExercised = []string{
	"POST /sign 500", "GET /sign/{request_id} 500", "DELETE /sign/{request_id} 500",
	"GET /sign/{request_id} 429", "DELETE /sign/{request_id} 429",
	"GET /sign/{request_id} 503", "DELETE /sign/{request_id} 503",
	"GET /ws 101", "GET /ws 403", "GET /ws 429", "GET /ws 503",
}

func (o *oas) checkCoverage(t *testing.T) {
	t.Helper()
	var missing []string
	for path, item := range o.doc.Paths.Map() {
		for method, op := range item.Operations() {
			for status := range op.Responses.Map() {
				k := fmt.Sprintf("%s %s %s", method, path, status)
				if !o.seen[k] && !slices.Contains(notExercised, k) {
					missing = append(missing, k)
				}
			}
		}
	}
	sort.Strings(missing)
	if len(missing) > 0 {
		t.Errorf("documented answers no test provoked: %v", missing)
	}
}

func TestOpenAPIResponses(t *testing.T) {
	r := startRelay(t, namedKeys)
	o := newOAS(t, r)
	h := r.connect(t, nil)
	post := func(key string, body []byte, hdr map[string]string) exchange {
		return exchange{method: http.MethodPost, path: "/sign", apiKey: key, body: body, header: hdr}
	}

	t.Run("meta", func(t *testing.T) {
		for _, p := range []string{"/healthz", "/livez", "/readyz"} {
			res := o.do(t, exchange{method: http.MethodGet, path: p}, http.StatusOK, "")
			if res.str("status") != "ok" {
				t.Fatalf("%s: %s", p, res.Raw)
			}
		}
		o.do(t, exchange{method: http.MethodGet, path: "/openapi.yaml"}, http.StatusOK, "")
		o.do(t, exchange{method: http.MethodGet, path: "/ws"}, http.StatusUpgradeRequired, "upgrade_required")
		o.do(t, exchange{method: http.MethodGet, path: "/metrics"}, http.StatusOK, "")
	})

	t.Run("blocking signed", func(t *testing.T) {
		msg := []byte("blocking")
		ch := o.doAsync(post(billingKey, signBody(h.pub, msg, map[string]any{"description": "oas", "timeout_ms": 10000}), nil))
		h.approve(h.expect(protocol.TypeSignRequest))
		res := o.await(t, ch)
		if res.Status != http.StatusOK || res.Header.Get("X-Request-Id") != res.str("request_id") {
			t.Fatalf("got %d: %s", res.Status, res.Raw)
		}
	})

	t.Run("async lifecycle", func(t *testing.T) {
		msg := []byte("async")
		res := o.do(t, post(billingKey, asyncBody(h.pub, msg, map[string]any{"timeout_ms": 600000}), nil), http.StatusAccepted, "")
		checkResource(t, res, "pending", h.pub, msg)
		id := res.str("request_id")
		if res.Header.Get("Location") != "/sign/"+id || res.str("requester") != "billing" {
			t.Fatalf("202: %v %s", res.Header, res.Raw)
		}
		req := h.expect(protocol.TypeSignRequest)
		get := exchange{method: http.MethodGet, path: "/sign/" + id, apiKey: billingKey}
		checkResource(t, o.do(t, get, http.StatusOK, ""), "pending", h.pub, msg)
		h.approve(req)
		get.path += "?wait_ms=10000"
		checkResource(t, o.do(t, get, http.StatusOK, ""), "signed", h.pub, msg)
		res = o.do(t, exchange{method: http.MethodDelete, path: "/sign/" + id, apiKey: billingKey}, http.StatusConflict, "not_pending")
		if res.str("request_id") != id {
			t.Fatalf("409 without the request_id: %s", res.Raw)
		}
	})

	t.Run("cancel", func(t *testing.T) {
		msg := []byte("cancel")
		res := o.do(t, post(testAPIKey, asyncBody(h.pub, msg, nil), nil), http.StatusAccepted, "")
		id := res.str("request_id")
		h.expect(protocol.TypeSignRequest)
		del := exchange{method: http.MethodDelete, path: "/sign/" + id, apiKey: testAPIKey}
		checkResource(t, o.do(t, del, http.StatusOK, ""), "cancelled", h.pub, msg)
		h.expectCancel(id, "cancelled")
		checkResource(t, o.do(t, del, http.StatusOK, ""), "cancelled", h.pub, msg)
		// Another API key does not see it.
		o.do(t, exchange{method: http.MethodGet, path: "/sign/" + id, apiKey: billingKey}, http.StatusNotFound, "not_found")
	})

	t.Run("blocking cancelled", func(t *testing.T) {
		hdr := map[string]string{"Idempotency-Key": "oas-cancel-1"}
		ch := o.doAsync(post(testAPIKey, signBody(h.pub, []byte("wait then cancel"), nil), hdr))
		req := h.expect(protocol.TypeSignRequest)
		o.do(t, exchange{method: http.MethodDelete, path: "/sign/" + req.str("request_id"), apiKey: testAPIKey}, http.StatusOK, "")
		h.expectCancel(req.str("request_id"), "cancelled")
		res := o.await(t, ch)
		if res.Status != http.StatusConflict || res.errCode() != "cancelled" || res.str("request_id") != req.str("request_id") {
			t.Fatalf("blocking call got %d: %s", res.Status, res.Raw)
		}
	})

	t.Run("rejected", func(t *testing.T) {
		ch := o.doAsync(post(testAPIKey, signBody(h.pub, []byte("no"), nil), nil))
		h.reject(h.expect(protocol.TypeSignRequest), "not today")
		res := o.await(t, ch)
		e, _ := res.Body["error"].(map[string]any)
		if res.Status != http.StatusForbidden || res.errCode() != "rejected" || e["reason"] != "not today" {
			t.Fatalf("got %d: %s", res.Status, res.Raw)
		}
		// The same as a resource.
		res = o.do(t, post(testAPIKey, asyncBody(h.pub, []byte("no, async"), nil), nil), http.StatusAccepted, "")
		h.reject(h.expect(protocol.TypeSignRequest), "")
		res = o.do(t, exchange{method: http.MethodGet, path: "/sign/" + res.str("request_id") + "?wait_ms=10000", apiKey: testAPIKey}, http.StatusOK, "")
		checkResource(t, res, "rejected", h.pub, []byte("no, async"))
	})

	t.Run("invalid signature", func(t *testing.T) {
		msg := []byte("bad signature")
		ch := o.doAsync(post(testAPIKey, signBody(h.pub, msg, nil), nil))
		req := h.expect(protocol.TypeSignRequest)
		h.send(frame{"type": "sign_response", "request_id": req.str("request_id"), "message": req.str("message"),
			"signature": b64(ed25519.Sign(h.priv, []byte("something else")))})
		h.expectError(protocol.CodeInvalidSignature)
		if res := o.await(t, ch); res.Status != http.StatusBadGateway || res.errCode() != "invalid_signature" {
			t.Fatalf("got %d: %s", res.Status, res.Raw)
		}
	})

	t.Run("timeout", func(t *testing.T) {
		o.do(t, post(testAPIKey, signBody(h.pub, []byte("too slow"), map[string]any{"timeout_ms": 50}), nil), http.StatusGatewayTimeout, "timeout")
		h.expect(protocol.TypeSignRequest)
		h.expect(protocol.TypeSignCancel)
		res := o.do(t, post(testAPIKey, asyncBody(h.pub, []byte("too slow, async"), map[string]any{"timeout_ms": 50}), nil), http.StatusAccepted, "")
		h.expect(protocol.TypeSignRequest)
		h.expect(protocol.TypeSignCancel)
		res = o.do(t, exchange{method: http.MethodGet, path: "/sign/" + res.str("request_id") + "?wait_ms=10000", apiKey: testAPIKey}, http.StatusOK, "")
		checkResource(t, res, "timeout", h.pub, []byte("too slow, async"))
	})

	t.Run("idempotency", func(t *testing.T) {
		hdr := map[string]string{"Idempotency-Key": "order-4711"}
		first := o.do(t, post(testAPIKey, asyncBody(h.pub, []byte("idem"), nil), hdr), http.StatusAccepted, "")
		h.expect(protocol.TypeSignRequest)
		again := o.do(t, post(testAPIKey, asyncBody(h.pub, []byte("idem"), nil), hdr), http.StatusAccepted, "")
		if again.str("request_id") != first.str("request_id") || again.Header.Get("Idempotent-Replayed") != "true" {
			t.Fatalf("replay: %v %s", again.Header, again.Raw)
		}
		res := o.do(t, post(testAPIKey, asyncBody(h.pub, []byte("other"), nil), hdr), http.StatusUnprocessableEntity, "idempotency_key_reused")
		if res.str("request_id") != first.str("request_id") {
			t.Fatalf("422 names %q, want %q", res.str("request_id"), first.str("request_id"))
		}
		bad := post(testAPIKey, asyncBody(h.pub, []byte("idem"), nil), map[string]string{"Idempotency-Key": "bad key"})
		bad.invalid = true
		o.do(t, bad, http.StatusBadRequest, "invalid_request")
	})

	t.Run("refusals", func(t *testing.T) {
		stranger, _ := newKey(t)
		res := o.do(t, post(testAPIKey, signBody(stranger, []byte("x"), nil), nil), http.StatusNotFound, "not_connected")
		if res.str("request_id") == "" {
			t.Fatalf("404 without request_id: %s", res.Raw)
		}
		o.do(t, exchange{method: http.MethodGet, path: "/sign/0b6a1d3e-8f1c-4c55-9b56-0e3a3f5a2c10", apiKey: testAPIKey}, http.StatusNotFound, "not_found")
		o.do(t, exchange{method: http.MethodDelete, path: "/sign/0b6a1d3e-8f1c-4c55-9b56-0e3a3f5a2c10", apiKey: testAPIKey}, http.StatusNotFound, "not_found")

		bad := exchange{method: http.MethodPost, path: "/sign", apiKey: testAPIKey, invalid: true,
			body: []byte(`{"public_key":"AAAA","message":"aGk="}`)}
		o.do(t, bad, http.StatusBadRequest, "invalid_request")
		bad.body = []byte(`{"public_key":"` + b64(h.pub) + `","message":"aGk=","timeout_ms":0}`)
		o.do(t, bad, http.StatusBadRequest, "invalid_request")
		bad.body = []byte(`{"public_key":"` + b64(h.pub) + `","message":"aGk="}`)
		bad.header = map[string]string{"Idempotency-Key": strings.Repeat("k", 256)}
		o.do(t, bad, http.StatusBadRequest, "invalid_request")
		o.do(t, exchange{method: http.MethodGet, path: "/sign/not-a-uuid", apiKey: testAPIKey, invalid: true}, http.StatusBadRequest, "invalid_request")
		o.do(t, exchange{method: http.MethodDelete, path: "/sign/not-a-uuid", apiKey: testAPIKey, invalid: true}, http.StatusBadRequest, "invalid_request")
		o.do(t, exchange{method: http.MethodGet, path: "/sign/0b6a1d3e-8f1c-4c55-9b56-0e3a3f5a2c10?wait_ms=60001", apiKey: testAPIKey, invalid: true},
			http.StatusBadRequest, "invalid_request")

		for _, m := range []string{http.MethodPost, http.MethodGet, http.MethodDelete} {
			path := "/sign"
			if m != http.MethodPost {
				path = "/sign/0b6a1d3e-8f1c-4c55-9b56-0e3a3f5a2c10"
			}
			res := o.do(t, exchange{method: m, path: path, apiKey: "wrong-key", body: signBody(h.pub, []byte("x"), nil)}, http.StatusUnauthorized, "unauthorized")
			if res.Header.Get("WWW-Authenticate") == "" {
				t.Fatalf("401 without WWW-Authenticate")
			}
		}
		// Without any Authorization the document refuses the request too.
		o.do(t, exchange{method: http.MethodPost, path: "/sign", body: signBody(h.pub, []byte("x"), nil), invalid: true}, http.StatusUnauthorized, "unauthorized")

		big := make([]byte, r.cfg.Sign.MaxMessageBytes+1)
		o.do(t, post(testAPIKey, signBody(h.pub, big, nil), nil), http.StatusRequestEntityTooLarge, "message_too_large")

		o.methodNotAllowed(t, http.MethodGet, "/sign", "POST")
		o.methodNotAllowed(t, http.MethodPut, "/sign/0b6a1d3e-8f1c-4c55-9b56-0e3a3f5a2c10", "GET, DELETE")
	})

	t.Run("rate limited", func(t *testing.T) {
		rl := startRelay(t, func(c *config.Config) {
			c.RateLimits.Enabled = true
			c.RateLimits.AuthFailuresPerIP = config.Limit{Rate: 0.01, Burst: 1}
			c.RateLimits.SignPerAPIKey = config.Limit{Rate: 0.01, Burst: 1}
		})
		ro := newOAS(t, rl)
		defer mergeSeen(o, ro)
		x := exchange{method: http.MethodPost, path: "/sign", apiKey: "wrong-key", body: signBody(h.pub, []byte("x"), nil)}
		ro.do(t, x, http.StatusUnauthorized, "unauthorized")
		res := ro.do(t, x, http.StatusTooManyRequests, "rate_limited")
		if res.Header.Get("Retry-After") == "" {
			t.Fatal("429 without Retry-After")
		}
		stranger, _ := newKey(t)
		x.apiKey = testAPIKey
		x.body = signBody(stranger, []byte("x"), nil)
		ro.do(t, x, http.StatusNotFound, "not_connected")
		ro.do(t, x, http.StatusTooManyRequests, "rate_limited")
	})

	t.Run("shutting down", func(t *testing.T) {
		sr := startRelay(t, func(c *config.Config) { c.ShutdownGrace = configDuration(wait) })
		so := newOAS(t, sr)
		defer mergeSeen(o, so)
		sh := sr.connect(t, nil)
		ch := so.doAsync(post(testAPIKey, signBody(sh.pub, []byte("held over shutdown"), nil), nil))
		req := sh.expect(protocol.TypeSignRequest)
		done := make(chan struct{})
		go func() { defer close(done); sr.shutdown() }()
		deadline := time.Now().Add(wait)
		for {
			res := so.send(t, mustRequest(http.MethodGet, sr.base+"/healthz"))
			if res.Status == http.StatusServiceUnavailable {
				break
			}
			if time.Now().After(deadline) {
				t.Fatal("healthz did not turn 503")
			}
			time.Sleep(5 * time.Millisecond)
		}
		so.do(t, exchange{method: http.MethodGet, path: "/healthz"}, http.StatusServiceUnavailable, "")
		so.do(t, exchange{method: http.MethodGet, path: "/readyz"}, http.StatusServiceUnavailable, "unavailable")
		so.do(t, post(testAPIKey, signBody(sh.pub, []byte("too late"), nil), nil), http.StatusServiceUnavailable, "unavailable")
		sh.approve(req)
		if res := o.await(t, ch); res.Status != http.StatusOK {
			t.Fatalf("request held over shutdown: %d %s", res.Status, res.Raw)
		}
		<-done
	})

	o.checkCoverage(t)
}

func mergeSeen(dst, src *oas) {
	src.mu.Lock()
	defer src.mu.Unlock()
	dst.mu.Lock()
	defer dst.mu.Unlock()
	for k := range src.seen {
		dst.seen[k] = true
	}
}

func mustRequest(method, url string) *http.Request {
	req, err := http.NewRequest(method, url, nil)
	if err != nil {
		panic(err)
	}
	return req
}

// TestOpenAPIDetectsDrift shows that the checks above would catch a relay
// that drifts from the document: a renamed field, a missing field, a
// status the operation does not list, a wrong error code, a missing
// header.
func TestOpenAPIDetectsDrift(t *testing.T) {
	doc := loadOpenAPI(t)
	router, err := gorillamux.NewRouter(doc)
	if err != nil {
		t.Fatal(err)
	}
	o := &oas{t: t, doc: doc, router: router}
	opts := o.options()
	input := func(method, path string) *openapi3filter.RequestValidationInput {
		req := mustRequest(method, "http://relay"+path)
		route, params, err := router.FindRoute(req)
		if err != nil {
			t.Fatal(err)
		}
		return &openapi3filter.RequestValidationInput{Request: req, PathParams: params, Route: route}
	}
	const id = "0b6a1d3e-8f1c-4c55-9b56-0e3a3f5a2c10"
	pub := b64(make([]byte, 32))
	sig := b64(make([]byte, 64))
	js := http.Header{"Content-Type": {"application/json"}}
	withID := http.Header{"Content-Type": {"application/json"}, "X-Request-Id": {id}}
	resource := func(fields string) string {
		return `{"request_id":"` + id + `","public_key":"` + pub + `","message":"aGk=","description":"","requester":"",` +
			`"created_at":"2026-12-01T10:00:00.000Z","expires_at":"2026-12-01T10:10:00.000Z"` + fields + `}`
	}
	cases := []struct {
		name, method, path string
		status             int
		header             http.Header
		body               string
		ok                 bool
	}{
		{"sign result", "POST", "/sign", 200, withID, `{"request_id":"` + id + `","public_key":"` + pub + `","message":"aGk=","signature":"` + sig + `"}`, true},
		{"renamed signature", "POST", "/sign", 200, withID, `{"request_id":"` + id + `","public_key":"` + pub + `","message":"aGk=","sig":"` + sig + `"}`, false},
		{"extra field", "POST", "/sign", 200, withID, `{"request_id":"` + id + `","public_key":"` + pub + `","message":"aGk=","signature":"` + sig + `","extra":1}`, false},
		{"no X-Request-Id", "POST", "/sign", 200, js, `{"request_id":"` + id + `","public_key":"` + pub + `","message":"aGk=","signature":"` + sig + `"}`, false},
		{"undocumented status", "POST", "/sign", 418, js, `{"error":{"code":"invalid_request","message":"x"}}`, false},
		{"wrong code for status", "POST", "/sign", 404, js, `{"error":{"code":"not_found","message":"x"},"request_id":"` + id + `"}`, false},
		{"unknown code", "POST", "/sign", 400, js, `{"error":{"code":"bad_thing","message":"x"}}`, false},
		{"rejected without reason", "POST", "/sign", 403, withID, `{"error":{"code":"rejected","message":"x"},"request_id":"` + id + `"}`, false},
		{"rejected", "POST", "/sign", 403, withID, `{"error":{"code":"rejected","message":"x","reason":""},"request_id":"` + id + `"}`, true},
		{"401 without WWW-Authenticate", "POST", "/sign", 401, js, `{"error":{"code":"unauthorized","message":"x"}}`, false},
		{"429 without Retry-After", "POST", "/sign", 429, js, `{"error":{"code":"rate_limited","message":"x"}}`, false},
		{"202 without Location", "POST", "/sign", 202, withID, resource(`,"status":"pending"`), false},
		{"pending", "GET", "/sign/" + id, 200, js, resource(`,"status":"pending"`), true},
		{"unknown status", "GET", "/sign/" + id, 200, js, resource(`,"status":"lost"`), false},
		{"renamed requester", "GET", "/sign/" + id, 200, js, strings.Replace(resource(`,"status":"pending"`), `"requester"`, `"requested_by"`, 1), false},
		{"pending with completed_at", "GET", "/sign/" + id, 200, js, resource(`,"status":"pending","completed_at":"2026-12-01T10:00:01.000Z"`), false},
		{"signed", "GET", "/sign/" + id, 200, js, resource(`,"status":"signed","completed_at":"2026-12-01T10:00:01.000Z","signature":"` + sig + `"`), true},
		{"signed without signature", "GET", "/sign/" + id, 200, js, resource(`,"status":"signed","completed_at":"2026-12-01T10:00:01.000Z"`), false},
		{"timeout", "GET", "/sign/" + id, 200, js, resource(`,"status":"timeout","completed_at":"2026-12-01T10:00:01.000Z","error":{"code":"timeout","message":"x"}`), true},
		{"timeout with another code", "GET", "/sign/" + id, 200, js, resource(`,"status":"timeout","completed_at":"2026-12-01T10:00:01.000Z","error":{"code":"rejected","message":"x"}`), false},
		{"rejected resource without reason", "GET", "/sign/" + id, 200, js, resource(`,"status":"rejected","completed_at":"2026-12-01T10:00:01.000Z","error":{"code":"rejected","message":"x"}`), false},
		{"ended without completed_at", "GET", "/sign/" + id, 200, js, resource(`,"status":"cancelled","error":{"code":"cancelled","message":"x"}`), false},
		{"delete answers another status", "DELETE", "/sign/" + id, 200, js, resource(`,"status":"signed","completed_at":"2026-12-01T10:00:01.000Z","signature":"` + sig + `"`), false},
		{"not_pending without request_id", "DELETE", "/sign/" + id, 409, js, `{"error":{"code":"not_pending","message":"x"}}`, false},
		{"readyz", "GET", "/readyz", 200, js, `{"status":"ok"}`, true},
		{"readyz not ok", "GET", "/readyz", 200, js, `{"status":"fine"}`, false},
	}
	for _, c := range cases {
		err := validateAnswer(input(c.method, c.path), opts, c.status, c.header, []byte(c.body))
		if c.ok && err != nil {
			t.Errorf("%s: refused: %v", c.name, err)
		}
		if !c.ok && err == nil {
			t.Errorf("%s: accepted", c.name)
		}
	}
}
