// Package buildinfo says which build of the relay is running: the module
// version, the VCS revision it was built from (and whether the work tree
// had changes), and the Go toolchain, from runtime/debug.ReadBuildInfo.
// signrelay -version prints String.
package buildinfo

import (
	"fmt"
	"runtime"
	"runtime/debug"
	"strings"
)

// Info is what the binary knows about its own build.
type Info struct {
	Version  string // the main module's version: a tag, a pseudo-version, or "(devel)"
	Revision string // vcs.revision; "" when built without VCS information
	Time     string // vcs.time, RFC 3339; "" when unknown
	Modified bool   // vcs.modified: the work tree had uncommitted changes
	Go       string // the toolchain, e.g. go1.26.8
	Platform string // GOOS/GOARCH
}

// Read returns the running binary's Info.
func Read() Info {
	info := Info{Version: "(unknown)", Go: runtime.Version(), Platform: runtime.GOOS + "/" + runtime.GOARCH}
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return info
	}
	return fromBuildInfo(bi, info)
}

func fromBuildInfo(bi *debug.BuildInfo, info Info) Info {
	if bi.Main.Version != "" {
		info.Version = bi.Main.Version
	}
	if bi.GoVersion != "" {
		info.Go = bi.GoVersion
	}
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			info.Revision = s.Value
		case "vcs.time":
			info.Time = s.Value
		case "vcs.modified":
			info.Modified = s.Value == "true"
		}
	}
	return info
}

// String is one line, e.g.
// "signrelay v0.0.0-20261201192531-b502f84a1c2d revision b502f84a1c2d… (modified) 2026-12-01T19:25:31Z go1.26.8 linux/amd64".
func (i Info) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "signrelay %s", i.Version)
	if i.Revision == "" {
		b.WriteString(" revision unknown")
	} else {
		fmt.Fprintf(&b, " revision %s", i.Revision)
		if i.Modified {
			b.WriteString(" (modified)")
		}
	}
	if i.Time != "" {
		fmt.Fprintf(&b, " %s", i.Time)
	}
	fmt.Fprintf(&b, " %s %s", i.Go, i.Platform)
	return b.String()
}
