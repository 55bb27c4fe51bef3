package deploy

import (
	"debug/elf"
	"os/exec"
	"regexp"
	"strings"
	"testing"
)

// The Dockerfile's build line is the one the issue asks for, and what it
// builds runs on distroless/static: no ELF interpreter (PT_INTERP) and no
// shared libraries (DT_NEEDED), i.e. `ldd` would say "not a dynamic
// executable".
func TestBinaryIsStatic(t *testing.T) {
	line := strings.Join(buildLine, " ")
	for _, want := range []string{"CGO_ENABLED=0", "go build", "-trimpath", "-ldflags=-s -w"} {
		if !strings.Contains(line, want) {
			t.Errorf("the Dockerfile's build line %q lacks %q", line, want)
		}
	}
	f, err := elf.Open(relayBin)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			t.Errorf("the binary has an ELF interpreter (PT_INTERP): it is dynamically linked")
		}
		if p.Type == elf.PT_DYNAMIC {
			t.Errorf("the binary has a dynamic section (PT_DYNAMIC)")
		}
	}
	if libs, err := f.ImportedLibraries(); err != nil || len(libs) > 0 {
		t.Errorf("the binary needs shared libraries %v (%v)", libs, err)
	}
	// -s: no symbol table.
	if syms, err := f.Symbols(); err == nil && len(syms) > 0 {
		t.Errorf("the binary has %d symbols; -ldflags=-s strips them", len(syms))
	}
	if out, err := exec.Command("file", relayBin).Output(); err == nil {
		t.Logf("file: %s", strings.TrimSpace(string(out)))
		if !strings.Contains(string(out), "statically linked") {
			t.Errorf("file(1) does not call it statically linked: %s", out)
		}
	}
}

// -version prints the module version, the VCS revision the binary was
// built from (when the build could read .git), the Go version, and exits 0.
func TestVersionFlag(t *testing.T) {
	out, err := exec.Command(relayBin, "-version").CombinedOutput()
	if err != nil {
		t.Fatalf("signrelay -version: %v\n%s", err, out)
	}
	line := strings.TrimSpace(string(out))
	t.Logf("signrelay -version: %s", line)
	if strings.Count(line, "\n") != 0 || !regexp.MustCompile(`^signrelay \S+ revision \S+ .*go1\.\d+`).MatchString(line) {
		t.Fatalf("signrelay -version printed %q", line)
	}
	head, err := exec.Command("git", "-C", repoRoot, "rev-parse", "HEAD").Output()
	if err != nil {
		t.Logf("no git revision to compare with (%v)", err)
		return
	}
	if rev := strings.TrimSpace(string(head)); !strings.Contains(line, "revision "+rev) {
		t.Errorf("-version says %q, want revision %s (built from this checkout with VCS stamping)", line, rev)
	}
	// -trimpath: no build directory in the binary's build information.
	info, err := exec.Command("go", "version", "-m", relayBin).Output()
	if err == nil && !strings.Contains(string(info), "-trimpath=true") {
		t.Errorf("go version -m shows no -trimpath:\n%s", info)
	}
	if out, err := exec.Command(relayBin, "no-such-command").CombinedOutput(); err == nil {
		t.Errorf("signrelay no-such-command exited 0: %s", out)
	}
}
