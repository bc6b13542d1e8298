package bpf

// The types named with -type become Go types (MeshSvcKey, ...) so that map
// keys and values are never retyped by hand. bpf2go maps the source
// directory out of the debug info, so regeneration is byte-identical.
//go:generate go tool bpf2go -cc clang -cflags "-O2 -Wall -Werror -I/usr/include/x86_64-linux-gnu" -target bpfel -type addr -type svc_key -type svc_value -type backend -type svc_stats -type rev_key -type rev_value -type endpoint_info -type redirect -type ns_info -type policy_key -type policy_value -type tuple -type meta_value Mesh mesh.c
