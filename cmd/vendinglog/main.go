// Command vendinglog reads a vending machine's event log for a human, as hashicorp/raft-wal's
// waldump does for its log: the segments and snapshots of the directory, then every record
// (sequence, type, the decoded vending event). On damage it says which file and offset hold the
// first bad record, shows the bytes there and where readable records resume, and goes on.
//
// It only reads: it takes no lock and opens every file read-only, so it works on the log of a
// running machine (whose LOCK is held) and on a corrupt or quarantined claim, and never changes
// what a human is trying to look at.
//
//	vendinglog dump DIR [--after N] [--limit N] [--json]
//
// Exit status: 0 for a readable log, 3 when damage was found, 2 for bad usage or an unreadable
// directory.
package main

import (
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/vendingfleet/vending-operator/internal/contract"
	"github.com/vendingfleet/vending-operator/internal/eventlog"
	"github.com/vendingfleet/vending-operator/internal/vending"
	"github.com/vendingfleet/vending-operator/internal/vendingpod"
)

const (
	exitOK      = 0
	exitUsage   = 2
	exitDamaged = 3

	// shownBytes is how much of a damaged file the dump shows from the bad record on.
	shownBytes = 64
)

func main() { os.Exit(run(os.Args[1:], os.Stdout, os.Stderr)) }

const usage = "usage: vendinglog dump DIR [--after N] [--limit N] [--json]"

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] != "dump" {
		_, _ = fmt.Fprintln(stderr, usage)
		return exitUsage
	}
	fs := flag.NewFlagSet("dump", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var opts options
	fs.Uint64Var(&opts.after, "after", 0, "show only records with a sequence after this")
	fs.IntVar(&opts.limit, "limit", 0, "show at most this many records (0: all)")
	fs.BoolVar(&opts.json, "json", false, "one JSON object per line instead of text")
	// Flags may come before or after DIR.
	var dirs []string
	for rest := args[1:]; ; {
		if err := fs.Parse(rest); err != nil {
			return exitUsage
		}
		if fs.NArg() == 0 {
			break
		}
		dirs = append(dirs, fs.Arg(0))
		rest = fs.Args()[1:]
	}
	if len(dirs) != 1 || opts.limit < 0 {
		_, _ = fmt.Fprintln(stderr, usage)
		return exitUsage
	}
	d := &dumper{options: opts, out: stdout}
	if err := d.dump(dirs[0]); err != nil {
		_, _ = fmt.Fprintln(stderr, "vendinglog:", err)
		return exitUsage
	}
	if d.damaged {
		return exitDamaged
	}
	return exitOK
}

type options struct {
	after uint64
	limit int
	json  bool
}

type dumper struct {
	options
	out     io.Writer
	shown   int
	damaged bool
}

// Lines of the --json output; "kind" says which.
type fileLine struct {
	Kind     string `json:"kind"` // "segment" or "snapshot"
	Name     string `json:"name"`
	FirstSeq uint64 `json:"firstSeq"`
	Size     int64  `json:"size"`
}

type snapshotLine struct {
	Kind       string `json:"kind"` // "snapshotState"
	Name       string `json:"name"`
	Seq        uint64 `json:"seq"`
	Inserted   int64  `json:"inserted"`
	TotalCoins int64  `json:"totalCoins"`
	Orders     int    `json:"orders"`
	Pending    int    `json:"pending"`
	Keys       int    `json:"keys"`
	Error      string `json:"error,omitempty"`
}

type recordLine struct {
	Kind   string          `json:"kind"` // "record"
	File   string          `json:"file"`
	Offset int64           `json:"offset"`
	Seq    uint64          `json:"seq"`
	Type   int             `json:"type"`
	Size   int             `json:"size"`
	Event  *contract.Event `json:"event,omitempty"`
	Error  string          `json:"error,omitempty"` // the payload does not decode as an event
	// AfterDamage marks records read past a bad record of the same file.
	AfterDamage bool `json:"afterDamage,omitempty"`
}

type damageLine struct {
	Kind       string `json:"kind"` // "damage"
	File       string `json:"file"`
	Offset     int64  `json:"offset"`
	Error      string `json:"error"`
	Torn       bool   `json:"torn"` // cut short by the end of the file
	Bytes      string `json:"bytes"`
	NextOffset int64  `json:"nextOffset,omitempty"` // where a readable record resumes
	NextSeq    uint64 `json:"nextSeq,omitempty"`
}

func (d *dumper) emit(v any, text string) {
	if d.json {
		b, _ := json.Marshal(v)
		_, _ = fmt.Fprintf(d.out, "%s\n", b)
		return
	}
	_, _ = fmt.Fprintln(d.out, text)
}

func (d *dumper) full() bool { return d.limit > 0 && d.shown >= d.limit }

func (d *dumper) dump(dir string) error {
	files, err := eventlog.ListFiles(dir)
	if err != nil {
		return err
	}
	if !d.json {
		_, _ = fmt.Fprintf(d.out, "log %s: %d files\n", dir, len(files))
	}
	for _, f := range files {
		kind := "segment"
		if f.Snapshot {
			kind = "snapshot"
		}
		d.emit(fileLine{Kind: kind, Name: f.Name, FirstSeq: f.FirstSeq, Size: f.Size},
			fmt.Sprintf("  %-8s %s  seq %d  %d bytes", kind, f.Name, f.FirstSeq, f.Size))
	}
	for _, f := range files {
		if f.Snapshot {
			d.snapshot(filepath.Join(dir, f.Name))
		}
	}
	for _, f := range files {
		if !f.Snapshot && !d.full() {
			if err := d.segment(filepath.Join(dir, f.Name)); err != nil {
				return err
			}
		}
	}
	return nil
}

// snapshot summarizes a snapshot: the state it holds, as a machine restores it.
func (d *dumper) snapshot(path string) {
	line := snapshotLine{Kind: "snapshotState", Name: filepath.Base(path)}
	var payload []byte
	end, err := eventlog.ScanFile(path, 0, eventlog.MaxSnapshotSize, func(_ int64, rec eventlog.Record) error {
		if rec.Type != eventlog.TypeSnapshot || payload != nil {
			return fmt.Errorf("not a single snapshot record (type %d)", rec.Type)
		}
		line.Seq, payload = rec.Seq, append([]byte(nil), rec.Payload...)
		return nil
	})
	if err == nil && payload == nil {
		err = errors.New("empty snapshot")
	}
	if err == nil {
		m := vending.New(vending.DefaultConfig())
		if err = m.RestoreSnapshot(payload); err == nil {
			st := m.State()
			line.Inserted, line.TotalCoins, line.Pending = st.Inserted, st.TotalCoins, len(m.Pending())
			line.Keys, line.Orders = m.Retained()
		}
	}
	if err != nil {
		d.damaged = true
		line.Error = fmt.Sprintf("at offset %d: %v", end, err)
		d.emit(line, fmt.Sprintf("snapshot %s: DAMAGED %s", line.Name, line.Error))
		return
	}
	d.emit(line, fmt.Sprintf("snapshot %s: seq %d, inserted %d, totalCoins %d, orders %d (%d pending), keys %d",
		line.Name, line.Seq, line.Inserted, line.TotalCoins, line.Orders, line.Pending, line.Keys))
}

// segment lists the records of one segment; past a bad record it shows the damage and goes on
// from where records can be read again.
func (d *dumper) segment(path string) error {
	name := filepath.Base(path)
	if !d.json {
		_, _ = fmt.Fprintf(d.out, "%s:\n", name)
	}
	afterDamage := false
	show := func(off int64, rec eventlog.Record) error {
		if rec.Seq <= d.after {
			return nil
		}
		if d.full() {
			return errStop
		}
		d.shown++
		d.record(name, off, rec, afterDamage)
		return nil
	}
	from := int64(0)
	for {
		at, err := eventlog.ScanFile(path, from, 0, show)
		var ce *eventlog.CorruptError
		switch {
		case err == nil || errors.Is(err, errStop):
			return nil
		case !errors.As(err, &ce):
			return err
		}
		d.damaged = true
		line := damageLine{Kind: "damage", File: path, Offset: at, Error: ce.Err.Error(),
			Torn: errors.Is(ce.Err, io.ErrUnexpectedEOF), Bytes: hexAt(path, at)}
		next, rec, found, ferr := eventlog.FindRecord(path, at+8, 0)
		if ferr != nil {
			return ferr
		}
		if found {
			line.NextOffset, line.NextSeq = next, rec.Seq
		}
		d.emit(line, damageText(line, found))
		if !found {
			return nil
		}
		from, afterDamage = next, true
	}
}

var errStop = errors.New("vendinglog: limit reached")

func (d *dumper) record(file string, off int64, rec eventlog.Record, afterDamage bool) {
	line := recordLine{Kind: "record", File: file, Offset: off, Seq: rec.Seq, Type: int(rec.Type),
		Size: len(rec.Payload), AfterDamage: afterDamage}
	text := fmt.Sprintf("  seq %-8d @%-9d ", rec.Seq, off)
	if afterDamage {
		text = "  (after damage)" + text[1:]
	}
	if rec.Type != vendingpod.RecordEvent {
		d.emit(line, text+fmt.Sprintf("type %d, %d bytes (not a vending event)", rec.Type, len(rec.Payload)))
		return
	}
	e, err := vending.DecodeEvent(rec.Payload)
	if err != nil {
		line.Error = err.Error()
		d.emit(line, text+"UNDECODABLE EVENT: "+err.Error())
		return
	}
	ev := e.View(rec.Seq)
	line.Event = &ev
	d.emit(line, text+eventText(e))
}

func eventText(e *vending.Event) string {
	return strings.TrimSpace(e.Kind.String() + " " + e.View(0).Details())
}

func damageText(l damageLine, found bool) string {
	var b strings.Builder
	fmt.Fprintf(&b, "DAMAGE %s at offset %d: %s\n", l.File, l.Offset, l.Error)
	if l.Torn {
		fmt.Fprintf(&b, "  the record is cut short by the end of the file (a torn write if this is the log's last segment)\n")
	}
	fmt.Fprintf(&b, "  bytes from offset %d: %s\n", l.Offset, l.Bytes)
	if found {
		fmt.Fprintf(&b, "  readable records resume at offset %d (seq %d)", l.NextOffset, l.NextSeq)
	} else {
		fmt.Fprintf(&b, "  no readable record follows in this file")
	}
	return b.String()
}

// hexAt shows up to shownBytes of path from off, read-only.
func hexAt(path string, off int64) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer func() { _ = f.Close() }()
	b := make([]byte, shownBytes)
	n, _ := f.ReadAt(b, off)
	return hex.EncodeToString(b[:n])
}
