package eventlog

import (
	"os"

	"golang.org/x/sys/unix"
)

// FS is the file-system seam: the log does all its I/O through it, so tests inject ENOSPC,
// short writes and failed fsyncs.
type FS interface {
	OpenFile(name string, flag int, perm os.FileMode) (File, error)
	ReadFile(name string) ([]byte, error)
	ReadDir(name string) ([]os.DirEntry, error)
	Rename(oldpath, newpath string) error
	Remove(name string) error
	MkdirAll(path string, perm os.FileMode) error
	// SyncDir makes renames and creations in a directory durable.
	SyncDir(name string) error
	// Lock takes an exclusive, non-blocking lock on a file for the life of the process (or
	// until the returned release).
	Lock(name string) (release func() error, err error)
}

// File is an open file of an FS.
type File interface {
	Write(p []byte) (int, error)
	// Sync makes written data durable (fdatasync on the real file system).
	Sync() error
	Truncate(size int64) error
	Seek(offset int64, whence int) (int64, error)
	Close() error
}

// OSFS is the real file system.
type OSFS struct{}

type osFile struct{ *os.File }

// Sync is fdatasync: the data and the size, without the timestamps the log never reads.
func (f osFile) Sync() error { return unix.Fdatasync(int(f.Fd())) }

// OpenFile opens a file.
func (OSFS) OpenFile(name string, flag int, perm os.FileMode) (File, error) {
	f, err := os.OpenFile(name, flag, perm)
	if err != nil {
		return nil, err
	}
	return osFile{f}, nil
}

// ReadFile reads a whole file.
func (OSFS) ReadFile(name string) ([]byte, error) { return os.ReadFile(name) }

// ReadDir lists a directory.
func (OSFS) ReadDir(name string) ([]os.DirEntry, error) { return os.ReadDir(name) }

// Rename renames a file.
func (OSFS) Rename(oldpath, newpath string) error { return os.Rename(oldpath, newpath) }

// Remove removes a file.
func (OSFS) Remove(name string) error { return os.Remove(name) }

// MkdirAll creates a directory.
func (OSFS) MkdirAll(path string, perm os.FileMode) error { return os.MkdirAll(path, perm) }

// SyncDir fsyncs a directory.
func (OSFS) SyncDir(name string) error {
	d, err := os.Open(name)
	if err != nil {
		return err
	}
	defer func() { _ = d.Close() }()
	return d.Sync()
}

// Lock takes flock(LOCK_EX|LOCK_NB) on name, creating it.
func (OSFS) Lock(name string) (func() error, error) {
	f, err := os.OpenFile(name, os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, err
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		_ = f.Close()
		if err == unix.EWOULDBLOCK {
			return nil, ErrLocked
		}
		return nil, err
	}
	return f.Close, nil
}
