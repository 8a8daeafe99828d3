package eventlog

import (
	"math/rand"
	"os"
	"path/filepath"
	"testing"
)

// BenchmarkFindRecordThroughGarbage is vendinglog dump's search for where readable records
// resume after damage: 1 MiB of random bytes, then a record. Garbage lengths that happen to be
// plausible must not make the reader grow its window and reread the file for each.
func BenchmarkFindRecordThroughGarbage(b *testing.B) {
	garbage := make([]byte, 1<<20)
	rand.New(rand.NewSource(1)).Read(garbage)
	path := filepath.Join(b.TempDir(), segmentName(1))
	if err := os.WriteFile(path, appendRecord(garbage, 7, 16, []byte("resumes here")), 0o600); err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(len(garbage)))
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		off, rec, found, err := FindRecord(path, 0, 0)
		if err != nil || !found || rec.Seq != 7 || off != int64(len(garbage)) {
			b.Fatalf("found %v at %d (seq %d), %v", found, off, rec.Seq, err)
		}
	}
}
