//go:build !race

package clusterproc

// raceEnabled: the tests run without -race, so the relay is built without it.
const raceEnabled = false
