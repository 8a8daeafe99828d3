package depstmp

import (
	_ "github.com/spf13/cobra"
	_ "github.com/yuin/gopher-lua"
	_ "k8s.io/cli-runtime/pkg/genericclioptions"
	_ "k8s.io/cli-runtime/pkg/genericiooptions"
	_ "k8s.io/cli-runtime/pkg/printers"
	_ "sigs.k8s.io/cli-utils/pkg/kstatus/status"
)
