// Command etcd is the etcd 3.6 server, built from its published Go module.
//
// Debian ships etcd 3.4, which current kube-apiserver releases refuse; the etcd
// project's own main package lives in a module that is not meant to be
// imported, so this wrapper calls the same entry point it does.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
