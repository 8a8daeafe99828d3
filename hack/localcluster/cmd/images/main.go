// Command images builds OCI image tarballs from static binaries, without Docker and without a
// registry: an empty base plus one layer holding the binary, run as a non-root user. The
// tarballs import into containerd (ctr -n k8s.io images import) and into kind (kind load
// image-archive). The first binary of a ref is the entrypoint; more (comma-separated) ride
// along, as the log dump tool does in the vending pod's image.
//
//	images -out bin/images vendingfleet/vending-operator:dev=bin/manager vendingfleet/vendingpod:dev=bin/vendingpod,bin/vendinglog
package main

import (
	"archive/tar"
	"bytes"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// nonRoot is the user the images run as (distroless's "nonroot").
const nonRoot = "65532:65532"

func main() {
	out := flag.String("out", "bin/images", "directory for the tarballs")
	flag.Parse()
	if flag.NArg() == 0 {
		fmt.Fprintln(os.Stderr, "usage: images -out DIR ref=binary[,binary...] ...")
		os.Exit(2)
	}
	if err := os.MkdirAll(*out, 0o755); err != nil {
		fail(err)
	}
	for _, arg := range flag.Args() {
		ref, bin, ok := strings.Cut(arg, "=")
		if !ok {
			fail(fmt.Errorf("%q: want ref=binary", arg))
		}
		path, err := build(*out, ref, strings.Split(bin, ","))
		if err != nil {
			fail(fmt.Errorf("%s: %w", ref, err))
		}
		fmt.Println(path)
	}
}

func build(out, ref string, bins []string) (string, error) {
	tag, err := name.NewTag(ref)
	if err != nil {
		return "", err
	}
	layer, err := binaryLayer(bins)
	if err != nil {
		return "", err
	}
	img, err := mutate.AppendLayers(empty.Image, layer)
	if err != nil {
		return "", err
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return "", err
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "linux", "amd64"
	cf.Config = v1.Config{Entrypoint: []string{"/" + filepath.Base(bins[0])}, User: nonRoot, WorkingDir: "/"}
	if img, err = mutate.ConfigFile(img, cf); err != nil {
		return "", err
	}
	path := filepath.Join(out, strings.NewReplacer("/", "_", ":", "_").Replace(ref)+".tar")
	return path, tarball.WriteToFile(path, tag, img)
}

// binaryLayer is a layer with each binary at /<name> and an empty /tmp.
func binaryLayer(bins []string) (v1.Layer, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	mod := time.Unix(0, 0)
	if err := tw.WriteHeader(&tar.Header{Name: "tmp/", Typeflag: tar.TypeDir, Mode: 0o1777, ModTime: mod}); err != nil {
		return nil, err
	}
	for _, bin := range bins {
		data, err := os.ReadFile(bin)
		if err != nil {
			return nil, err
		}
		h := &tar.Header{Name: filepath.Base(bin), Typeflag: tar.TypeReg, Mode: 0o755, Size: int64(len(data)), ModTime: mod}
		if err := tw.WriteHeader(h); err != nil {
			return nil, err
		}
		if _, err := tw.Write(data); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	b := buf.Bytes()
	return tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil })
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "images:", err)
	os.Exit(1)
}
