package config

import (
	"bytes"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"

	"sigs.k8s.io/yaml"
)

// Load reads YAML and JSON files and directories. Directories are walked
// recursively for *.yaml, *.yml and *.json files (names starting with a dot
// are skipped, symbolic links to files are followed, so a mounted ConfigMap
// works); a file named explicitly is read whatever its extension. Files may
// hold several documents separated by "---" lines, and `kind: List` objects.
//
// Load returns every object it could decode, and a Diagnostic for every
// problem: SeverityError for what cannot be used (bad YAML, unknown fields,
// unsupported apiVersion of a supported kind, duplicate objects),
// SeverityInfo for kinds nodemesh does not read. An object that appears twice
// is returned once (the first) with an error for the second.
func Load(paths ...string) ([]*Object, []Diagnostic) {
	files, diags := listFiles(paths...)
	var inputs []fileData
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			diags = append(diags, fileError(f, fmt.Errorf("read file: %w", err)))
			continue
		}
		inputs = append(inputs, fileData{f, data})
	}
	objs, d := decodeFiles(inputs)
	return dedupe(objs, append(diags, d...))
}

// Decode decodes the documents of one file's content; file is only used in
// diagnostics and Origin. See Load.
func Decode(file string, data []byte) ([]*Object, []Diagnostic) {
	return dedupe(decodeFiles([]fileData{{file, data}}))
}

// HasErrors reports whether any diagnostic has SeverityError.
func HasErrors(diags []Diagnostic) bool {
	for _, d := range diags {
		if d.Severity == SeverityError {
			return true
		}
	}
	return false
}

func fileError(file string, err error) Diagnostic {
	return Diagnostic{Severity: SeverityError, Origin: Origin{File: file}, Message: err.Error()}
}

// listFiles expands paths into the files to read, in a stable order.
func listFiles(paths ...string) ([]string, []Diagnostic) {
	var files []string
	var diags []Diagnostic
	for _, p := range paths {
		st, err := os.Stat(p)
		if err != nil {
			diags = append(diags, fileError(p, fmt.Errorf("stat: %w", err)))
			continue
		}
		if !st.IsDir() {
			files = append(files, p)
			continue
		}
		root := p
		if lst, err := os.Lstat(p); err == nil && lst.Mode()&fs.ModeSymlink != 0 {
			root = p + string(filepath.Separator) // walk the directory the link points to
		}
		err = filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
			if err != nil {
				diags = append(diags, fileError(path, fmt.Errorf("walk: %w", err)))
				return nil
			}
			if path != root && strings.HasPrefix(d.Name(), ".") {
				if d.IsDir() {
					return filepath.SkipDir
				}
				return nil
			}
			if d.IsDir() || !isConfigFile(d.Name()) {
				return nil
			}
			if d.Type()&fs.ModeSymlink != 0 {
				st, err := os.Stat(path)
				if err != nil {
					diags = append(diags, fileError(path, fmt.Errorf("stat: %w", err)))
					return nil
				}
				if !st.Mode().IsRegular() {
					return nil
				}
			} else if !d.Type().IsRegular() {
				return nil
			}
			files = append(files, path)
			return nil
		})
		if err != nil {
			diags = append(diags, fileError(p, fmt.Errorf("walk: %w", err)))
		}
	}
	return files, diags
}

func isConfigFile(name string) bool {
	switch strings.ToLower(filepath.Ext(name)) {
	case ".yaml", ".yml", ".json":
		return true
	}
	return false
}

// dedupe drops every object whose Key was already seen, with an error.
func dedupe(objs []*Object, diags []Diagnostic) ([]*Object, []Diagnostic) {
	seen := make(map[Key]*Object, len(objs))
	out := objs[:0]
	for _, o := range objs {
		if first, ok := seen[o.Key]; ok {
			diags = append(diags, Diagnostic{
				Severity: SeverityError, Origin: o.Origin, Object: o.Key,
				Message: "duplicate object, first defined at " + first.Origin.String(),
			})
			continue
		}
		seen[o.Key] = o
		out = append(out, o)
	}
	return out, diags
}

// document is one YAML document of a file.
type document struct {
	index int    // 0-based index among the file's non-empty documents
	start int    // 1-based line of the document's first line of text
	line  int    // 1-based line of its first line that is not blank or a comment
	data  []byte // its text
}

var utf8BOM = []byte("\xef\xbb\xbf")

// splitDocuments splits a YAML stream on lines that are exactly "---"
// (optionally followed by blanks and a comment), dropping documents that hold
// only blank lines and comments.
func splitDocuments(data []byte) []document {
	data = bytes.TrimPrefix(data, utf8BOM)
	var docs []document
	cur, startOff, lineNo := document{start: 1}, 0, 0
	emit := func(end int) {
		if cur.line > 0 { // the document has content
			cur.index = len(docs)
			cur.data = data[startOff:end]
			docs = append(docs, cur)
		}
	}
	for off := 0; off < len(data); {
		lineNo++
		end, next := len(data), len(data)
		if i := bytes.IndexByte(data[off:], '\n'); i >= 0 {
			end, next = off+i, off+i+1
		}
		line := bytes.TrimRight(data[off:end], "\r")
		switch {
		case isSeparator(line):
			emit(off)
			cur, startOff = document{start: lineNo + 1}, next
		case cur.line == 0 && isContent(line):
			cur.line = lineNo
		}
		off = next
	}
	emit(len(data))
	return docs
}

func isSeparator(line []byte) bool {
	if !bytes.HasPrefix(line, []byte("---")) {
		return false
	}
	rest := bytes.TrimLeft(line[3:], " \t")
	if len(rest) == len(line)-3 && len(rest) > 0 {
		return false // "----" or "---x"
	}
	return len(rest) == 0 || rest[0] == '#'
}

func isContent(line []byte) bool {
	t := bytes.TrimSpace(line)
	return len(t) > 0 && t[0] != '#'
}

type fileData struct {
	name string
	data []byte
}

// decodeFiles decodes every document of the files, without deduplication,
// in order. Documents are decoded in parallel: YAML parsing dominates the
// cold start of a large mesh.
func decodeFiles(files []fileData) ([]*Object, []Diagnostic) {
	var jobs []*decoder
	var docs []document
	for _, f := range files {
		for _, doc := range splitDocuments(f.data) {
			jobs = append(jobs, &decoder{file: f.name})
			docs = append(docs, doc)
		}
	}
	parallelFor(len(jobs), func(i int) { jobs[i].document(docs[i]) })
	var objs []*Object
	var diags []Diagnostic
	for _, d := range jobs {
		objs = append(objs, d.objs...)
		diags = append(diags, d.diags...)
	}
	return objs, diags
}

// parallelFor calls fn(0..n-1) on up to GOMAXPROCS goroutines; small
// inputs stay on the caller's goroutine.
func parallelFor(n int, fn func(i int)) {
	workers := min(runtime.GOMAXPROCS(0), n/16+1)
	if workers <= 1 {
		for i := range n {
			fn(i)
		}
		return
	}
	var next atomic.Int64
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for i := int(next.Add(1) - 1); i < n; i = int(next.Add(1) - 1) {
				fn(i)
			}
		})
	}
	wg.Wait()
}

type decoder struct {
	file  string
	objs  []*Object
	diags []Diagnostic
}

var yamlLineRE = regexp.MustCompile(`\bline (\d+)\b`)

func (d *decoder) document(doc document) {
	origin := Origin{File: d.file, Doc: doc.index, Line: doc.line}
	defer func() {
		if r := recover(); r != nil {
			d.diags = append(d.diags, Diagnostic{Severity: SeverityError, Origin: origin,
				Message: fmt.Sprintf("internal error decoding document: %v", r)})
		}
	}()
	js, err := yaml.YAMLToJSONStrict(doc.data)
	if err != nil {
		// Make the parser's document-relative line numbers file-relative.
		msg := yamlLineRE.ReplaceAllStringFunc(err.Error(), func(m string) string {
			n, _ := strconv.Atoi(strings.TrimPrefix(m, "line "))
			return "line " + strconv.Itoa(n+doc.start-1)
		})
		msg = strings.TrimPrefix(msg, "error converting YAML to JSON: ")
		d.diags = append(d.diags, Diagnostic{Severity: SeverityError, Origin: origin,
			Message: "invalid YAML: " + msg})
		return
	}
	if bytes.Equal(bytes.TrimSpace(js), []byte("null")) {
		return // a document holding only "~" or "null"
	}
	first := len(d.diags)
	d.value(origin, "", js)
	// Point at the line of each bad field (Origin.Line is the document's).
	lines := fieldLines{doc: doc}
	for i := first; i < len(d.diags); i++ {
		if d.diags[i].Severity == SeverityError {
			if l := lines.line(d.diags[i].Field); l > 0 {
				d.diags[i].Message += " (line " + strconv.Itoa(l) + ")"
			}
		}
	}
}
