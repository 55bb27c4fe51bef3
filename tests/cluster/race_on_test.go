//go:build race

package clusterproc

// raceEnabled: the tests run with -race, so the relay is built with it too.
const raceEnabled = true
