package main

import (
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	mrand "math/rand/v2"
	"net/http"
	"os"
	"time"
)

// The request modes of a load run (-mode). sync is the blocking POST /sign;
// async posts "wait": false and long-polls the resource until it is signed;
// replay measures Idempotency-Key replays of one signed request per backend.
const (
	modeSync   = "sync"
	modeAsync  = "async"
	modeReplay = "replay"
)

// asyncWaitMS is the wait_ms of an asynchronous run's long polls.
const asyncWaitMS = 30000

var (
	errNotReplayed = errors.New("not_replayed") // a replay without Idempotent-Replayed: true, or with another signature
	errBadResource = errors.New("bad_resource") // a 202 or a resource the generator could not read
)

// endStatus is the HTTP status a blocking call gets for a request that
// ended in state (docs/protocol.md, "The resource"), so that an
// asynchronous run counts its outcomes as a blocking one does.
var endStatus = map[string]int{
	"signed":            200,
	"rejected":          403,
	"invalid_signature": 502,
	"timeout":           504,
	"cancelled":         409,
	"unavailable":       503,
}

// nextStart is when a backend's next request starts: the pacer's time
// (sched not nil) or now; false when the backend is done.
func nextStart(sched <-chan time.Time, winEnd time.Time) (time.Time, bool) {
	if sched != nil {
		t0, ok := <-sched
		return t0, ok
	}
	t0 := time.Now()
	return t0, t0.Before(winEnd)
}

// loadBody fills msg with random bytes and returns body set to a POST /sign
// body for h, ending with tail (which closes the object).
func loadBody(rng *mrand.Rand, body, msg []byte, h *holder, tail string) []byte {
	for i := 0; i < len(msg); i += 8 {
		v := rng.Uint64()
		for j := 0; j < 8 && i+j < len(msg); j++ {
			msg[i+j] = byte(v >> (8 * j))
		}
	}
	body = append(body[:0], `{"public_key":"`...)
	body = append(body, h.pub64...)
	body = append(body, `","message":"`...)
	body = base64.StdEncoding.AppendEncode(body, msg)
	body = append(body, '"')
	return append(body, tail...)
}

// record books one finished request the way backend does: every request
// in total (and totalBad unless it is a 200 without err), and those that
// finished inside the window by status, transport error and latency.
func record(r *workerResult, t0, done, winStart, winEnd time.Time, status int, resp []byte, err error) {
	r.total++
	if err != nil || status != 200 {
		r.totalBad++
		if r.totalBad <= 3 {
			fmt.Fprintf(os.Stderr, "request failed: status %d err %v body %.200s\n", status, err, resp)
		}
	}
	if done.Before(winStart) || done.After(winEnd) {
		return
	}
	if err != nil {
		r.transport[errKind(err)]++
		return
	}
	r.status[status]++
	r.lat = append(r.lat, done.Sub(t0))
}

func workerSetup(o loadOptions, r *workerResult) (*mrand.Rand, []byte, []byte) {
	capHint := int(o.duration.Seconds()*o.rate/float64(o.backends)) + 1024
	if o.rate <= 0 {
		capHint = 1 << 14
	}
	r.lat = make([]time.Duration, 0, capHint)
	return mrand.New(mrand.NewPCG(mrand.Uint64(), mrand.Uint64())),
		make([]byte, o.msgBytes), make([]byte, 0, 128+base64.StdEncoding.EncodedLen(o.msgBytes))
}

// backendAsync is one backend of -mode async: each request is a POST with
// "wait": false (202 expected), then GET /sign/{id}?wait_ms=asyncWaitMS,
// repeated while the resource is pending. The request completes when the
// GET shows it ended; its latency runs from the POST to that GET's answer.
// An end state other than signed counts as the status a blocking call
// would have got (403, 502, 504, 409, 503).
func backendAsync(o loadOptions, c signCaller, holders []*holder, r *workerResult, sched <-chan time.Time, winStart, winEnd time.Time) {
	rng, msg, body := workerSetup(o, r)
	tail := fmt.Sprintf(`,"timeout_ms":%d,"wait":false}`, o.timeout.Milliseconds())
	poll := fmt.Sprintf("?wait_ms=%d", asyncWaitMS)
	for {
		t0, ok := nextStart(sched, winEnd)
		if !ok {
			return
		}
		h := holders[rng.IntN(len(holders))]
		body = loadBody(rng, body, msg, h, tail)
		status, resp, _, err := c.do(http.MethodPost, "", body, "")
		if err == nil && status == 202 {
			status, resp, err = awaitResource(c, &r.gets, jsonString(resp, "request_id"), poll, t0.Add(o.timeout+asyncWaitMS*time.Millisecond+10*time.Second))
		}
		if err == nil && status == 200 && !goodSignature(resp, h.pub, msg, o.checkSigs) {
			err = errBadSignature
		}
		record(r, t0, time.Now(), winStart, winEnd, status, resp, err)
	}
}

// awaitResource long-polls /sign/id until the request ends (or giveUp
// passes) and returns the status a blocking call would have got with the
// resource as the body; a GET that is not 200 is returned as it is.
// Each GET adds one to *gets.
func awaitResource(c signCaller, gets *int, id, poll string, giveUp time.Time) (int, []byte, error) {
	if len(id) != 36 {
		return 0, nil, fmt.Errorf("%w: 202 without a request_id", errBadResource)
	}
	suffix := "/" + id + poll
	for {
		*gets++
		status, resp, _, err := c.do(http.MethodGet, suffix, nil, "")
		if err != nil || status != 200 {
			return status, resp, err
		}
		state, _ := jsonRaw(resp, "status")
		if string(state) == "pending" {
			if time.Now().After(giveUp) {
				return 0, resp, fmt.Errorf("%w: still pending past its deadline", errBadResource)
			}
			continue
		}
		end, known := endStatus[string(state)]
		if !known {
			return 0, resp, fmt.Errorf("%w: status %q", errBadResource, state)
		}
		return end, resp, nil
	}
}

// backendReplay is one backend of -mode replay: it makes one blocking
// request with a fresh Idempotency-Key (a holder answers it; counted in
// the whole run, never in the window), then repeats the same body with the
// same key until the run ends. A replay must be 200 with
// Idempotent-Replayed: true and the first answer's signature. If the first
// request fails, the next try uses a new key and message.
func backendReplay(o loadOptions, c signCaller, holders []*holder, r *workerResult, sched <-chan time.Time, winStart, winEnd time.Time) {
	rng, msg, body := workerSetup(o, r)
	tail := fmt.Sprintf(`,"timeout_ms":%d}`, o.timeout.Milliseconds())
	var key string
	var sig []byte // the first answer's signature; nil until one is signed
	for {
		t0, ok := nextStart(sched, winEnd)
		if !ok {
			return
		}
		if sig == nil {
			h := holders[rng.IntN(len(holders))]
			body = loadBody(rng, body, msg, h, tail)
			var k [16]byte
			_, _ = rand.Read(k[:])
			key = "bench-" + hex.EncodeToString(k[:])
			r.firsts++
			status, resp, replayed, err := c.do(http.MethodPost, "", body, key)
			if err == nil && status == 200 && (replayed || !goodSignature(resp, h.pub, msg, o.checkSigs)) {
				err = errBadSignature
				if replayed {
					err = fmt.Errorf("%w: a fresh key's first request was answered as a replay", errNotReplayed)
				}
			}
			if err == nil && status == 200 {
				s, _ := jsonRaw(resp, "signature")
				sig = bytes.Clone(s)
			}
			// The first request is booked in the whole run only.
			record(r, t0, time.Now(), time.Time{}, time.Time{}, status, resp, err)
			continue
		}
		status, resp, replayed, err := c.do(http.MethodPost, "", body, key)
		if err == nil && status == 200 {
			if s, _ := jsonRaw(resp, "signature"); !replayed || !bytes.Equal(s, sig) {
				err = errNotReplayed
			}
		}
		record(r, t0, time.Now(), winStart, winEnd, status, resp, err)
	}
}
