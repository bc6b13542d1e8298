// Command meshctl inspects nodemesh configuration offline:
//
//	meshctl analyze DIR...                               every diagnostic, like istioctl analyze
//	meshctl translate DIR --node N [--grpc-namespace NS]  the xDS a node (or a proxyless client) gets, as YAML
//	meshctl proxy-status [--addr HOST:PORT]              a running meshd's per-node sync status
package main

import "os"

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}
