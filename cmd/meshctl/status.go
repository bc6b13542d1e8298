package main

import (
	"flag"
	"fmt"
	"io"
	"net/http"
	"time"
)

// runProxyStatus prints a running meshd's sync status (its /debug/syncz
// table), as istioctl proxy-status does.
func runProxyStatus(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("proxy-status", flag.ContinueOnError)
	fs.SetOutput(stderr)
	addr := fs.String("addr", "127.0.0.1:15014", "meshd's --debug-addr")
	if err := fs.Parse(args); err != nil || fs.NArg() > 0 {
		fmt.Fprint(stderr, "usage: meshctl proxy-status [--addr HOST:PORT]\n")
		return 2
	}
	client := &http.Client{Timeout: 10 * time.Second}
	resp, err := client.Get("http://" + *addr + "/debug/syncz")
	if err != nil {
		fmt.Fprintf(stderr, "meshctl: ask meshd for sync status: %v\n", err)
		return 1
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		fmt.Fprintf(stderr, "meshctl: meshd answered %s: %s\n", resp.Status, b)
		return 1
	}
	if _, err := io.Copy(stdout, resp.Body); err != nil {
		fmt.Fprintf(stderr, "meshctl: read sync status: %v\n", err)
		return 1
	}
	return 0
}
