package main

import (
	"bytes"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"reflect"
	"strings"
	"testing"
)

func parseLoad(args ...string) (loadOptions, error) {
	return parseLoadFlags(append([]string{"-api-key", "k"}, args...), flag.ContinueOnError, io.Discard)
}

func TestLoadFlagsDefaults(t *testing.T) {
	o, err := parseLoad("-url", "http://127.0.0.1:19380", "-pid", "42")
	if err != nil {
		t.Fatal(err)
	}
	if o.addr != "127.0.0.1:19380" || o.holderAddr != o.addr || o.pid != 42 || o.pids != nil {
		t.Fatalf("addr %q holderAddr %q pid %d pids %v", o.addr, o.holderAddr, o.pid, o.pids)
	}
	// The flags that were there before keep their defaults.
	if o.holders != 100 || o.backends != 64 || o.client != "fasthttp" || o.msgBytes != 32 || o.rate != 0 || o.idle.n != 0 {
		t.Fatalf("defaults changed: %+v", o)
	}
}

func TestLoadFlagsHolderURL(t *testing.T) {
	o, err := parseLoad("-url", "http://127.0.0.1:19380", "-holder-url", "http://127.0.0.1:19381")
	if err != nil {
		t.Fatal(err)
	}
	if o.addr != "127.0.0.1:19380" || o.holderAddr != "127.0.0.1:19381" {
		t.Fatalf("addr %q holderAddr %q", o.addr, o.holderAddr)
	}
	if o, err := parseLoad("-url", "http://127.0.0.1:1", "-holder-url", "http://[::1]:2"); err != nil || o.holderAddr != "[::1]:2" {
		t.Fatalf("[::1]: %q, %v", o.holderAddr, err)
	}
	for _, bad := range []struct{ url, want string }{
		{"http://192.0.2.1:8080", "only loopback"},
		{"http://10.0.0.1:80", "only loopback"},
		{"http://[2001:db8::1]:80", "only loopback"},
		{"http://127.0.0.1", "explicit port"},
		{"https://127.0.0.1:443", "want http://HOST:PORT"},
		{"127.0.0.1:8080", "want http://HOST:PORT"},
		{"http://", "want http://HOST:PORT"},
	} {
		_, err := parseLoad("-url", "http://127.0.0.1:19380", "-holder-url", bad.url)
		if err == nil || !strings.Contains(err.Error(), bad.want) || !strings.Contains(err.Error(), "-holder-url") {
			t.Errorf("-holder-url %q: err %v, want one naming -holder-url with %q", bad.url, err, bad.want)
		}
	}
	// -url is checked as before, and its errors still name -url.
	if _, err := parseLoad("-url", "http://192.0.2.1:8080", "-holder-url", "http://127.0.0.1:1"); err == nil || !strings.HasPrefix(err.Error(), `-url "http://192.0.2.1:8080": only loopback`) {
		t.Errorf("-url not loopback: %v", err)
	}
}

func TestLoadFlagsPIDs(t *testing.T) {
	cases := []struct {
		pids string
		want []procRef
	}{
		{"", nil},
		{"12", []procRef{{pid: 12}}},
		{"12,34", []procRef{{pid: 12}, {pid: 34}}},
		{" 12 , 34 ", []procRef{{pid: 12}, {pid: 34}}},
		{"B=12,nats-server=34", []procRef{{name: "B", pid: 12}, {name: "nats-server", pid: 34}}},
		{"relay.b=12,34", []procRef{{name: "relay.b", pid: 12}, {pid: 34}}},
	}
	for _, c := range cases {
		o, err := parseLoad("-pid", "7", "-pids", c.pids)
		if err != nil {
			t.Errorf("-pids %q: %v", c.pids, err)
			continue
		}
		if !reflect.DeepEqual(o.pids, c.want) {
			t.Errorf("-pids %q = %+v, want %+v", c.pids, o.pids, c.want)
		}
	}
	many := make([]string, maxExtraPIDs+1)
	for i := range many {
		many[i] = fmt.Sprint(100 + i)
	}
	for _, bad := range []string{"0", "-3", "x", "12,", ",12", "12,,34", "12,12", "7", "B=7", "=12", "a b=12", "B=", "B=x",
		"relay=12", "Cluster=12", "machine=12", "generator=12", "B=12,B=34",
		strings.Repeat("n", 33) + "=12", strings.Join(many, ",")} {
		if _, err := parseLoad("-pid", "7", "-pids", bad); err == nil || !strings.Contains(err.Error(), "-pids") {
			t.Errorf("-pids %q: err %v, want a -pids error", bad, err)
		}
	}
	if _, err := parseLoad("-pids", "12"); err == nil || !strings.Contains(err.Error(), "-pids needs -pid") {
		t.Errorf("-pids without -pid: %v", err)
	}
}

func TestLoadFlagsErrors(t *testing.T) {
	if _, err := parseLoadFlags([]string{"-no-such-flag"}, flag.ContinueOnError, io.Discard); err == nil {
		t.Error("an unknown flag was accepted")
	}
	if _, err := parseLoadFlags([]string{"-url", "http://127.0.0.1:1"}, flag.ContinueOnError, io.Discard); err == nil || !strings.Contains(err.Error(), "-api-key") {
		t.Errorf("no API key: %v", err)
	}
	if _, err := parseLoad("-holders", "0"); err == nil {
		t.Error("-holders 0 was accepted")
	}
}

// TestLoadHolderURLAndPIDs runs the load with the holders on another
// address of the same relay and one more process measured: the extra lines
// appear and the existing ones stay.
func TestLoadHolderURLAndPIDs(t *testing.T) {
	addr := startSmokeRelay(t)
	_, port, _ := net.SplitHostPort(addr)
	o := smokeLoad(addr)
	o.holderAddr = "localhost:" + port
	o.pids = []procRef{{name: "parent", pid: os.Getppid()}, {pid: os.Getppid() + 1000000}} // the second does not exist
	out, err := captureStdout(t, func() error { return runLoad(o) })
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	for _, want := range []string{
		"key holders' relay:        localhost:" + port,
		"also measured:             parent (pid ",
		"relay CPU:", "machine CPU:", "relay CPU / Verify:",
		"parent CPU:", "pid/" + fmt.Sprint(os.Getppid()+1000000) + " CPU:", "unreadable (pid",
		"cluster CPU:", "lower bound", "machine CPU, cluster:", "parent VmRSS:",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("no %q in the output:\n%s", want, out)
		}
	}
	if strings.Contains(out, "cluster CPU / Verify:") {
		t.Errorf("a ratio was printed with a process unreadable:\n%s", out)
	}
}

func captureStdout(t *testing.T, f func() error) (string, error) {
	t.Helper()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	saved := os.Stdout
	os.Stdout = w
	var buf bytes.Buffer
	copied := make(chan struct{})
	go func() { defer close(copied); _, _ = io.Copy(&buf, r) }()
	ferr := f()
	os.Stdout = saved
	_ = w.Close()
	<-copied
	_ = r.Close()
	return buf.String(), ferr
}

func TestLoadFlagsMode(t *testing.T) {
	if o, err := parseLoad(); err != nil || o.mode != modeSync {
		t.Fatalf("default -mode: %q, %v", o.mode, err)
	}
	for _, m := range []string{"sync", "async", "replay"} {
		if o, err := parseLoad("-mode", m); err != nil || o.mode != m {
			t.Errorf("-mode %s: %q, %v", m, o.mode, err)
		}
	}
	if _, err := parseLoad("-mode", "blocking"); err == nil || !strings.Contains(err.Error(), "-mode") {
		t.Errorf("-mode blocking: %v", err)
	}
}
