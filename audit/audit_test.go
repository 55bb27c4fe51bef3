package audit

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

func entry(i int) Entry {
	return Entry{RequestID: "r" + string(rune('a'+i%26)), PublicKey: "k", MessageSHA256: MessageDigest([]byte{byte(i)}), Code: "ok", Status: 200}
}

func lines(t *testing.T, path string) []string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return strings.Split(strings.TrimSuffix(string(b), "\n"), "\n")
}

// Concurrent appends make one intact chain, and a reopened log continues it.
func TestChainAcrossRestarts(t *testing.T) {
	for _, policy := range []Sync{SyncAlways, SyncInterval, SyncNever} {
		t.Run(string(policy), func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "audit.log")
			l, err := Open(path, policy)
			if err != nil {
				t.Fatal(err)
			}
			var wg sync.WaitGroup
			for i := 0; i < 50; i++ {
				wg.Add(1)
				go func() {
					defer wg.Done()
					if err := l.Append(entry(i)); err != nil {
						t.Error(err)
					}
				}()
			}
			wg.Wait()
			if err := l.Close(); err != nil {
				t.Fatal(err)
			}
			l, err = Open(path, policy)
			if err != nil {
				t.Fatal(err)
			}
			if err := l.Append(entry(99)); err != nil {
				t.Fatal(err)
			}
			_ = l.Close()
			ls := lines(t, path)
			if len(ls) != 51 {
				t.Fatalf("%d lines, want 51", len(ls))
			}
			var last Entry
			_ = json.Unmarshal([]byte(ls[50]), &last)
			sum := sha256.Sum256([]byte(ls[49]))
			if last.Seq != 51 || last.Prev != hex.EncodeToString(sum[:]) {
				t.Fatalf("line after the restart: seq %d prev %s", last.Seq, last.Prev)
			}
			f, _ := os.Open(path)
			defer f.Close()
			if n, err := Verify(f); err != nil || n != 51 {
				t.Fatalf("Verify: %d, %v", n, err)
			}
		})
	}
}

// Changing, removing or reordering a line breaks the chain there.
func TestVerifyFindsTampering(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.log")
	l, _ := Open(path, SyncNever)
	for i := 0; i < 5; i++ {
		_ = l.Append(entry(i))
	}
	_ = l.Close()
	ls := lines(t, path)
	join := func(ls []string) string { return strings.Join(ls, "\n") + "\n" }
	edited := append([]string(nil), ls...)
	edited[2] = strings.Replace(edited[2], `"code":"ok"`, `"code":"rejected"`, 1)
	for name, tc := range map[string]struct {
		text string
		line string
	}{
		"edited":    {join(edited), "line 4"},
		"removed":   {join(append(append([]string(nil), ls[:1]...), ls[2:]...)), "line 2"},
		"reordered": {join([]string{ls[0], ls[2], ls[1], ls[3], ls[4]}), "line 2"},
		"not json":  {join([]string{ls[0], "garbage"}), "line 2"},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := Verify(strings.NewReader(tc.text))
			if err == nil || !strings.HasPrefix(err.Error(), tc.line) {
				t.Fatalf("Verify: %v, want an error at %s", err, tc.line)
			}
		})
	}
	var out, errOut bytes.Buffer
	if code := Main([]string{"verify", path}, &out, &errOut); code != 0 || !strings.Contains(out.String(), "5 lines") {
		t.Fatalf("Main on an intact log: %d %q %q", code, out.String(), errOut.String())
	}
	bad := filepath.Join(t.TempDir(), "bad.log")
	_ = os.WriteFile(bad, []byte(join(edited)), 0o600)
	if code := Main([]string{"verify", bad}, &out, &errOut); code != 1 || !strings.Contains(errOut.String(), "line 4") {
		t.Fatalf("Main on a broken log: %d %q", code, errOut.String())
	}
	if code := Main(nil, &out, &errOut); code != 2 {
		t.Fatalf("Main without arguments: %d", code)
	}
}

// A log whose last line was cut off, or is not an entry, is not continued.
func TestOpenRefusesABrokenEnd(t *testing.T) {
	dir := t.TempDir()
	for name, text := range map[string]string{"cut": `{"seq":1,"prev":"` + zeroHash + `"}` + "\n" + `{"seq":2`, "foreign": "hello\n"} {
		path := filepath.Join(dir, name)
		_ = os.WriteFile(path, []byte(text), 0o600)
		if _, err := Open(path, SyncAlways); err == nil {
			t.Fatalf("%s: opened", name)
		}
	}
}

// A write that fails fails every later Append too: the caller fails closed.
func TestWriteErrorSticks(t *testing.T) {
	if _, err := os.Stat("/dev/full"); err != nil {
		t.Skip("no /dev/full")
	}
	l, err := Open("/dev/full", SyncNever)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	for i := 0; i < 2; i++ {
		if err := l.Append(entry(i)); err == nil {
			t.Fatal("append to /dev/full succeeded")
		}
	}
}
