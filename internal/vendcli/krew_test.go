package vendcli

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"
)

// krewPlugin is the fields of krew's Plugin (krew.googlecontainertools.github.com/v1alpha2)
// the manifest uses, decoded strictly: a misspelt field fails as it would in krew.
type krewPlugin struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	Metadata   struct {
		Name string `json:"name"`
	} `json:"metadata"`
	Spec struct {
		Version          string `json:"version"`
		Homepage         string `json:"homepage"`
		ShortDescription string `json:"shortDescription"`
		Description      string `json:"description"`
		Caveats          string `json:"caveats"`
		Platforms        []struct {
			Selector struct {
				MatchLabels map[string]string `json:"matchLabels"`
			} `json:"selector"`
			URI    string `json:"uri"`
			Sha256 string `json:"sha256"`
			Bin    string `json:"bin"`
			Files  []struct {
				From string `json:"from"`
				To   string `json:"to"`
			} `json:"files"`
		} `json:"platforms"`
	} `json:"spec"`
}

// The krew manifest installs kubectl-vend on linux and darwin, amd64 and arm64, from the
// archives hack/krew/release.sh names, on the project's GitHub releases.
func TestKrewManifest(t *testing.T) {
	raw, err := os.ReadFile(filepath.Join("..", "..", "hack", "krew", "vend.yaml"))
	must(t, err)
	var p krewPlugin
	must(t, yaml.UnmarshalStrict(raw, &p, yaml.DisallowUnknownFields))
	if p.APIVersion != "krew.googlecontainertools.github.com/v1alpha2" || p.Kind != "Plugin" || p.Metadata.Name != "vend" {
		t.Errorf("not krew's Plugin vend: %s %s %s", p.APIVersion, p.Kind, p.Metadata.Name)
	}
	if !regexp.MustCompile(`^v\d+\.\d+\.\d+$`).MatchString(p.Spec.Version) || p.Spec.ShortDescription == "" {
		t.Errorf("version %q (krew wants semver with a v), short description %q", p.Spec.Version, p.Spec.ShortDescription)
	}
	release, err := os.ReadFile(filepath.Join("..", "..", "hack", "krew", "release.sh"))
	must(t, err)
	if !strings.Contains(string(release), "kubectl-vend_${version}_${os}_${arch}.tar.gz") {
		t.Error("release.sh no longer names the archives as the manifest's URIs do")
	}
	platforms := make([]string, 0, len(p.Spec.Platforms))
	for _, pl := range p.Spec.Platforms {
		goos, arch := pl.Selector.MatchLabels["os"], pl.Selector.MatchLabels["arch"]
		platforms = append(platforms, goos+"/"+arch)
		wantURI := fmt.Sprintf("https://github.com/vendingfleet/vending-operator/releases/download/%s/kubectl-vend_%s_%s_%s.tar.gz",
			p.Spec.Version, p.Spec.Version, goos, arch)
		if pl.URI != wantURI {
			t.Errorf("%s/%s: uri %s, want %s", goos, arch, pl.URI, wantURI)
		}
		if !regexp.MustCompile(`^[0-9a-f]{64}$`).MatchString(pl.Sha256) {
			t.Errorf("%s/%s: sha256 %q", goos, arch, pl.Sha256)
		}
		if pl.Bin != "kubectl-vend" || len(pl.Files) != 1 || pl.Files[0].From != "kubectl-vend" {
			t.Errorf("%s/%s: bin %q, files %+v: the archive holds kubectl-vend at its root", goos, arch, pl.Bin, pl.Files)
		}
	}
	slices.Sort(platforms)
	if want := []string{"darwin/amd64", "darwin/arm64", "linux/amd64", "linux/arm64"}; !slices.Equal(platforms, want) {
		t.Errorf("platforms %v, want %v", platforms, want)
	}
}
