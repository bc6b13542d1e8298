package config

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"time"
)

// FileSourceConfig configures a FileSource. Zero values of the optional
// fields give useful defaults.
type FileSourceConfig struct {
	// Dir is the directory to read (recursively; see Load). Required.
	Dir string
	// Store receives the objects. Required.
	Store *Store
	// Source names this source in the store; default "file:" + Dir.
	Source string
	// Interval between polls; default 200ms.
	Interval time.Duration
	// OnStatus, if set, is called after every poll that loaded the files
	// (applied or failed), from the goroutine that polled. It must not block
	// for long.
	OnStatus func(FileStatus)
}

// Validate reports a configuration that cannot work.
func (c FileSourceConfig) Validate() error {
	switch {
	case c.Dir == "":
		return errors.New("file source: Dir is required")
	case c.Store == nil:
		return errors.New("file source: Store is required")
	case c.Interval < 0:
		return fmt.Errorf("file source: negative Interval %v", c.Interval)
	}
	return nil
}

// FileStatus is what a FileSource last did.
type FileStatus struct {
	Source      string
	Files       int          // files read by the last load
	Objects     int          // objects in the last applied load
	Version     uint64       // store version after the last apply
	LastApplied time.Time    // when the last good load was applied; zero if never
	LastLoad    time.Time    // when the files were last loaded (changed content)
	Err         error        // why the last load was not applied; nil if it was
	Diagnostics []Diagnostic // every diagnostic of the last load, infos included
}

// LoadError is the error of a load that had SeverityError diagnostics; the
// store keeps the last good objects.
type LoadError struct {
	Dir         string
	Diagnostics []Diagnostic // the errors only
}

func (e *LoadError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "load %s: %d error(s), keeping the last good config", e.Dir, len(e.Diagnostics))
	for i, d := range e.Diagnostics {
		if i == 3 {
			fmt.Fprintf(&b, "; and %d more", len(e.Diagnostics)-i)
			break
		}
		b.WriteString("; " + d.String())
	}
	return b.String()
}

// FileSource keeps a Store's objects for one source equal to the content of
// a directory. It polls the content (a hash of every file's path and bytes)
// and, when it changed, loads the whole directory: a load with errors is not
// applied (the last good objects keep serving, and Status reports the
// error); a good load replaces the source's objects in one transaction.
type FileSource struct {
	cfg FileSourceConfig

	pollMu   sync.Mutex // serializes polls
	lastHash [sha256.Size]byte
	hashOK   bool // lastHash was loaded (applied or refused)
	// Replace was refused (another source owns a key) at store version
	// blockedAt.
	blocked   bool
	blockedAt uint64
	pending   [sha256.Size]byte
	pendOK    bool // pending holds the content seen by the previous poll

	mu     sync.Mutex // guards status
	status FileStatus
}

// NewFileSource returns a FileSource; it does nothing until Sync or Run.
func NewFileSource(cfg FileSourceConfig) (*FileSource, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.Source == "" {
		cfg.Source = "file:" + cfg.Dir
	}
	if cfg.Interval == 0 {
		cfg.Interval = 200 * time.Millisecond
	}
	return &FileSource{cfg: cfg, status: FileStatus{Source: cfg.Source}}, nil
}

// Run polls until ctx is done, starting with an immediate load. It returns
// nil when ctx is cancelled.
//
// A change is applied once two consecutive polls saw the same content, so
// that a file caught half-written (os.WriteFile truncates, then writes) is
// not applied, which would briefly delete its objects everywhere. Writing
// files atomically (write a temporary file, then rename it) is still best.
func (f *FileSource) Run(ctx context.Context) error {
	t := time.NewTicker(f.cfg.Interval)
	defer t.Stop()
	f.Sync()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
			f.poll(true)
		}
	}
}

// Sync polls once: if the directory's content changed since the last load,
// it loads it now and applies it when it has no errors. It returns the
// status error (nil when the current content is applied).
func (f *FileSource) Sync() error { return f.poll(false) }

// poll loads the directory if its content changed; with settle, only once
// the previous poll saw the same content.
func (f *FileSource) poll(settle bool) error {
	f.pollMu.Lock()
	defer f.pollMu.Unlock()
	files, diags := listFiles(f.cfg.Dir)
	contents := make([][]byte, len(files))
	h := sha256.New()
	for i, file := range files {
		data, err := os.ReadFile(file)
		if err != nil { // e.g. deleted between listing and reading
			diags = append(diags, fileError(file, fmt.Errorf("read file: %w", err)))
			continue
		}
		contents[i] = data
		writeStrings(h, file, string(data))
	}
	for _, d := range diags { // listing or reading errors are part of the state
		writeStrings(h, d.String())
	}
	var sum [sha256.Size]byte
	h.Sum(sum[:0])
	// A refused Replace is retried only once the store changed, since only
	// another source's change (or ours) can resolve the conflict.
	if f.hashOK && sum == f.lastHash && (!f.blocked || f.blockedAt == f.cfg.Store.Snapshot().Version()) {
		f.pendOK = false
		return f.Status().Err
	}
	if settle && !(f.pendOK && f.pending == sum) {
		f.pending, f.pendOK = sum, true
		return f.Status().Err
	}
	f.pendOK = false
	var inputs []fileData
	for i, file := range files {
		if contents[i] != nil {
			inputs = append(inputs, fileData{file, contents[i]})
		}
	}
	objs, d := decodeFiles(inputs)
	objs, diags = dedupe(objs, append(diags, d...))
	st := f.Status()
	st.Files, st.LastLoad, st.Diagnostics, st.Err = len(files), time.Now(), diags, nil
	f.lastHash, f.hashOK, f.blocked = sum, true, false
	before := f.cfg.Store.Snapshot().Version()
	if errs := errorsOnly(diags); len(errs) > 0 {
		st.Err = &LoadError{Dir: f.cfg.Dir, Diagnostics: errs}
	} else if err := f.cfg.Store.Replace(f.cfg.Source, objs); err != nil {
		st.Err = fmt.Errorf("load %s: %w", f.cfg.Dir, err)
		// Any write since before means a retry: never miss the one that
		// resolves the conflict.
		f.blocked, f.blockedAt = true, before
	} else {
		st.Objects, st.LastApplied = len(objs), st.LastLoad
		st.Version = f.cfg.Store.Snapshot().Version()
	}
	f.mu.Lock()
	f.status = st
	f.mu.Unlock()
	if f.cfg.OnStatus != nil {
		f.cfg.OnStatus(st)
	}
	return st.Err
}

// Status returns what the source last did.
func (f *FileSource) Status() FileStatus {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.status
}

func errorsOnly(diags []Diagnostic) []Diagnostic {
	var out []Diagnostic
	for _, d := range diags {
		if d.Severity == SeverityError {
			out = append(out, d)
		}
	}
	return out
}
