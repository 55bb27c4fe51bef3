package httpapi

import (
	"context"
	"log/slog"
	"time"

	"github.com/signrelay/signrelay/audit"
	"github.com/signrelay/signrelay/config"
	"github.com/signrelay/signrelay/signing"
)

// Journal is the service's signing.Journal: the one info log line of every
// ended request and, with audit.path set, its audit line. It maps each end
// to the status and code a blocking call gets, through the same table as
// the answers.
type Journal struct {
	log   *slog.Logger
	audit *audit.Log // nil without audit.path
}

// OpenJournal opens cfg's audit log, continuing its chain.
func OpenJournal(cfg config.Config, log *slog.Logger) (*Journal, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	j := &Journal{log: log}
	if cfg.Audit.Path != "" {
		l, err := audit.Open(cfg.Audit.Path, audit.Sync(cfg.Audit.Fsync))
		if err != nil {
			return nil, err
		}
		j.audit = l
	}
	return j, nil
}

// Ended implements signing.Journal. The audit line comes first, so that
// the log line says what the caller gets: 503 for a signature withheld
// because its audit line could not be written.
func (j *Journal) Ended(rec *signing.Record, err error) error {
	status, code := 200, "ok"
	if err != nil {
		status, code = mapSignError(err)
	}
	var aerr error
	if j.audit != nil {
		aerr = j.audit.Append(audit.Entry{
			Time: rec.Completed.UTC().Format(time.RFC3339Nano), RequestID: rec.ID, Requester: rec.Requester,
			PublicKey: rec.Key.String(), MessageSHA256: audit.MessageDigest(rec.Message), Description: rec.Description,
			Code: code, Status: status,
		})
	}
	if aerr != nil && err == nil {
		status, code = mapSignError(signing.ErrJournal)
	}
	// On every request's path: nothing is built when info is off, and
	// LogAttrs boxes nothing when it is on.
	if j.log.Enabled(context.Background(), slog.LevelInfo) {
		j.log.LogAttrs(context.Background(), slog.LevelInfo, "sign ended", slog.String("request_id", rec.ID),
			slog.String("requester", rec.Requester), slog.String("key", rec.Key.ShortString()),
			slog.Int("status", status), slog.String("code", code), slog.Int64("ms", rec.Completed.Sub(rec.Created).Milliseconds()))
	}
	return aerr
}

// Close closes the audit log; harmless twice and on nil.
func (j *Journal) Close() error {
	if j == nil || j.audit == nil {
		return nil
	}
	return j.audit.Close()
}
