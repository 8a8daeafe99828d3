package main

import (
	"os"
	"runtime/debug"
	"strconv"
	"strings"
)

// cgroupMemoryFiles hold the container's memory limit: cgroup v2, then v1.
var cgroupMemoryFiles = []string{"/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"}

// setMemoryLimit gives the Go runtime a soft memory limit of 90 % of the container's, unless
// GOMEMLIMIT says otherwise, and returns the limit in force (0: none). Without it the collector
// lets the heap grow to twice what is live before it runs, and an operator whose caches hold
// 10,000 machines meets its container's limit in a burst of garbage and is OOM-killed, though what
// it keeps would fit.
func setMemoryLimit() int64 {
	if os.Getenv("GOMEMLIMIT") != "" {
		return debug.SetMemoryLimit(-1)
	}
	soft := softMemoryLimit(cgroupMemoryFiles)
	if soft > 0 {
		debug.SetMemoryLimit(soft)
	}
	return soft
}

// softMemoryLimit is 90 % of the first limit the files give, 0 for none ("max", v1's huge "no
// limit", or no file).
func softMemoryLimit(files []string) int64 {
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		limit, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
		if err != nil || limit <= 0 || limit >= 1<<50 {
			return 0
		}
		return limit / 10 * 9
	}
	return 0
}
