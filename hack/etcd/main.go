// Command etcd is the upstream etcd server (go.etcd.io/etcd/server/v3/etcdmain), built here
// because these machines reach only the Go module proxy, not etcd's release downloads.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
