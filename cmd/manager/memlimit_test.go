package main

import (
	"os"
	"path/filepath"
	"testing"
)

func TestSoftMemoryLimit(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	for _, c := range []struct {
		name  string
		files []string
		want  int64
	}{
		{"v2 limit of the Deployment (256Mi)", []string{write("v2", "268435456\n")}, 241591905},
		{"v2 without limit", []string{write("v2max", "max\n")}, 0},
		{"v1 without limit", []string{filepath.Join(dir, "none"), write("v1", "9223372036854771712\n")}, 0},
		{"v1 limit, no v2 file", []string{filepath.Join(dir, "none"), write("v1l", "536870912")}, 483183819},
		{"no file", []string{filepath.Join(dir, "none")}, 0},
	} {
		if got := softMemoryLimit(c.files); got != c.want {
			t.Errorf("%s: %d, want %d", c.name, got, c.want)
		}
	}
}
