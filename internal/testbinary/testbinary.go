// Package testbinary builds a command of this module for tests that run it as a real process.
package testbinary

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// Main builds the command in dir (a path relative to the test's package, as
// "../../cmd/vendingpod") into a temporary directory, sets *path to the binary, runs the tests
// and exits with their result. Call it from TestMain.
func Main(m *testing.M, dir string, path *string) {
	tmp, err := os.MkdirTemp("", "testbinary-")
	if err != nil {
		panic(err)
	}
	*path = filepath.Join(tmp, filepath.Base(dir))
	if out, err := exec.Command("go", "build", "-o", *path, dir).CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "building %s: %v\n%s", dir, err, out)
		os.Exit(1)
	}
	code := m.Run()
	_ = os.RemoveAll(tmp)
	os.Exit(code)
}
