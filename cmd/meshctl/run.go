package main

import (
	"fmt"
	"io"
)

const usage = `usage:
  meshctl analyze DIR...
  meshctl translate DIR --node NODE [--grpc-namespace NS]
  meshctl proxy-status [--addr MESHD_DEBUG_ADDR]
`

// run dispatches a meshctl command and returns the exit code: 0 ok, 1
// problems found, 2 bad usage.
func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	switch args[0] {
	case "analyze":
		return runAnalyze(args[1:], stdout, stderr)
	case "translate":
		return runTranslate(args[1:], stdout, stderr)
	case "proxy-status":
		return runProxyStatus(args[1:], stdout, stderr)
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return 0
	default:
		fmt.Fprintf(stderr, "meshctl: unknown command %q\n%s", args[0], usage)
		return 2
	}
}
