package httpapi

import (
	"github.com/gofiber/fiber/v2"

	"github.com/signrelay/signrelay/protocol"
	"github.com/signrelay/signrelay/signing"
)

// resourceBody is a request resource on the wire (contract §C).
type resourceBody struct {
	RequestID   string       `json:"request_id"`
	Status      string       `json:"status"`
	PublicKey   string       `json:"public_key"`
	Message     string       `json:"message"`
	Description string       `json:"description"`
	Requester   string       `json:"requester"`
	CreatedAt   string       `json:"created_at"`
	ExpiresAt   string       `json:"expires_at"`
	CompletedAt string       `json:"completed_at,omitempty"`
	Signature   string       `json:"signature,omitempty"`
	Error       *errorDetail `json:"error,omitempty"`
}

func newResourceBody(r *signing.Record) resourceBody {
	b := resourceBody{
		RequestID: r.ID, Status: string(r.Status), PublicKey: r.Key.String(),
		Message: protocol.EncodeBase64(r.Message), Description: r.Description, Requester: r.Requester,
		CreatedAt: protocol.FormatTime(r.Created), ExpiresAt: protocol.FormatTime(r.Expires),
	}
	if r.Status == signing.StatusPending {
		return b
	}
	b.CompletedAt = protocol.FormatTime(r.Completed)
	if r.Status == signing.StatusSigned {
		b.Signature = protocol.EncodeBase64(r.Signature)
		return b
	}
	err := r.Err()
	b.Error = &errorDetail{Code: string(r.Status), Message: err.Error()}
	if r.Status == signing.StatusRejected {
		reason := r.Reason
		b.Error.Reason = &reason
	}
	return b
}

func writeResource(c *fiber.Ctx, status int, r *signing.Record) error {
	return c.Status(status).JSON(newResourceBody(r))
}
