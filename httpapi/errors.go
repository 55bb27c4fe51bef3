package httpapi

import (
	"errors"
	"strings"
	"time"

	"github.com/gofiber/fiber/v2"
	"github.com/gofiber/fiber/v2/utils"

	"github.com/signrelay/signrelay/signing"
)

// HTTP error codes of the contract, plus a few of ours for routing errors.
const (
	codeInvalidRequest   = "invalid_request"
	codeUnauthorized     = "unauthorized"
	codeRejected         = "rejected"
	codeNotConnected     = "not_connected"
	codeMessageTooLarge  = "message_too_large"
	codeRateLimited      = "rate_limited"
	codeInvalidSignature = "invalid_signature"
	codeUnavailable      = "unavailable"
	codeTimeout          = "timeout"
	codeRequesterGone    = "requester_gone"
	codeForbiddenOrigin  = "forbidden_origin"
	codeUpgradeRequired  = "upgrade_required"
	codeNotFound         = "not_found"
	codeMethodNotAllowed = "method_not_allowed"
	codeInternal         = "internal_error"
	codeCancelled        = "cancelled"
	codeNotPending       = "not_pending"
	codeIdempotencyReuse = "idempotency_key_reused"
)

// signErrors is the one table that maps signing's errors to the contract.
var signErrors = []struct {
	err    error
	status int
	code   string
}{
	{signing.ErrNotConnected, fiber.StatusNotFound, codeNotConnected},
	{signing.ErrRejected, fiber.StatusForbidden, codeRejected},
	{signing.ErrTimeout, fiber.StatusGatewayTimeout, codeTimeout},
	{signing.ErrInvalidSignature, fiber.StatusBadGateway, codeInvalidSignature},
	{signing.ErrShuttingDown, fiber.StatusServiceUnavailable, codeUnavailable},
	{signing.ErrJournal, fiber.StatusServiceUnavailable, codeUnavailable},
	{signing.ErrTooManyPending, fiber.StatusServiceUnavailable, codeUnavailable},
	{signing.ErrClusterUnreachable, fiber.StatusServiceUnavailable, codeUnavailable},
	{signing.ErrCancelled, fiber.StatusConflict, codeCancelled},
	{signing.ErrNotPending, fiber.StatusConflict, codeNotPending},
	{signing.ErrNotFound, fiber.StatusNotFound, codeNotFound},
	{signing.ErrIdempotencyKeyReused, fiber.StatusUnprocessableEntity, codeIdempotencyReuse},
	// The backend closed its connection: no answer is written at all.
	{signing.ErrRequesterGone, statusNoResponse, codeRequesterGone},
}

// statusNoResponse marks an outcome that gets no HTTP answer: only the
// contract's statuses are ever put on the wire.
const statusNoResponse = 0

func mapSignError(err error) (int, string) {
	for _, e := range signErrors {
		if errors.Is(err, e.err) {
			return e.status, e.code
		}
	}
	return fiber.StatusInternalServerError, codeInternal
}

type errorBody struct {
	Error     errorDetail `json:"error"`
	RequestID string      `json:"request_id,omitempty"`
}

type errorDetail struct {
	Code    string `json:"code"`
	Message string `json:"message"`
	// Reason is the key holder's own words when it declined.
	Reason *string `json:"reason,omitempty"`
}

func writeError(c *fiber.Ctx, status int, code, message, requestID string) error {
	c.Locals(localCode, code)
	return c.Status(status).JSON(errorBody{Error: errorDetail{Code: code, Message: message}, RequestID: requestID})
}

// errorHandler renders Fiber's own errors (unknown route, body over the
// limit, bad request line) in the contract's shape.
func (s *Server) errorHandler(c *fiber.Ctx, err error) error {
	status, code, msg := fiber.StatusInternalServerError, codeInternal, "internal error"
	var fe *fiber.Error
	if errors.As(err, &fe) {
		status, msg = fe.Code, fe.Message
		switch fe.Code {
		case fiber.StatusNotFound:
			code, msg = codeNotFound, "no such endpoint"
		case fiber.StatusMethodNotAllowed:
			code = codeMethodNotAllowed
		case fiber.StatusRequestEntityTooLarge:
			code, msg = codeMessageTooLarge, "request body is larger than the configured limit"
			// fasthttp stops reading the body here: close without a reset
			// that would destroy this answer.
			markLinger(c.Context().Conn())
		case fiber.StatusUpgradeRequired:
			code = codeUpgradeRequired
		case fiber.StatusBadRequest: // a bad request line or method
			code = codeInvalidRequest
		default: // "Request Header Fields Too Large" -> request_header_fields_too_large
			code = strings.ReplaceAll(strings.ToLower(utils.StatusMessage(fe.Code)), " ", "_")
		}
	} else {
		s.log.Error("unhandled error", "path", c.Path(), "err", err)
	}
	return s.refuseEarly(c, status, code, msg)
}

// refuseEarly answers a request refused before its handler runs; a
// POST /sign refused so still gets handleSign's info line.
func (s *Server) refuseEarly(c *fiber.Ctx, status int, code, msg string) error {
	err := writeError(c, status, code, msg, "")
	if isSignCall(c) {
		s.logRefused(c, &signCall{}, code, time.Now())
	}
	return err
}
