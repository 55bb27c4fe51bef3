package buildinfo

import (
	"runtime/debug"
	"strings"
	"testing"
)

func TestString(t *testing.T) {
	bi := &debug.BuildInfo{
		GoVersion: "go1.26.8",
		Main:      debug.Module{Path: "github.com/signrelay/signrelay", Version: "v1.2.3"},
		Settings: []debug.BuildSetting{
			{Key: "vcs.revision", Value: "b502f84a1c2d"},
			{Key: "vcs.time", Value: "2026-12-01T19:25:31Z"},
			{Key: "vcs.modified", Value: "true"},
		},
	}
	got := fromBuildInfo(bi, Info{Version: "(unknown)", Platform: "linux/amd64"}).String()
	want := "signrelay v1.2.3 revision b502f84a1c2d (modified) 2026-12-01T19:25:31Z go1.26.8 linux/amd64"
	if got != want {
		t.Fatalf("got  %q\nwant %q", got, want)
	}

	bare := fromBuildInfo(&debug.BuildInfo{Main: debug.Module{Version: "(devel)"}}, Info{Go: "go1.26.8", Platform: "linux/amd64"}).String()
	if bare != "signrelay (devel) revision unknown go1.26.8 linux/amd64" {
		t.Fatalf("without VCS information: %q", bare)
	}
}

func TestReadInTest(t *testing.T) {
	// A test binary has build information, though not the main module's VCS stamp.
	if s := Read().String(); !strings.HasPrefix(s, "signrelay ") || !strings.Contains(s, "go1.") {
		t.Fatalf("Read: %q", s)
	}
}
