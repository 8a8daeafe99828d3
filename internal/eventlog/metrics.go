package eventlog

import "github.com/prometheus/client_golang/prometheus"

// Metrics of a log, for Prometheus.
type Metrics struct {
	Appends         prometheus.Counter
	FsyncSeconds    prometheus.Histogram
	BatchRecords    prometheus.Histogram
	ReplaySeconds   prometheus.Gauge
	ReplayedRecords prometheus.Gauge
	TornTailRepairs prometheus.Counter
	Snapshots       prometheus.Counter
}

// NewMetrics creates the log's metrics and registers them with reg (if not nil).
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		Appends: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "vending_eventlog_appends_total", Help: "Records made durable in the event log."}),
		FsyncSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "vending_eventlog_fsync_seconds", Help: "Time to write and fdatasync one group commit.",
			Buckets: prometheus.ExponentialBuckets(0.00005, 2, 16)}),
		BatchRecords: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "vending_eventlog_batch_records", Help: "Records per group commit.",
			Buckets: prometheus.ExponentialBuckets(1, 2, 12)}),
		ReplaySeconds: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "vending_eventlog_replay_seconds", Help: "Time the last start spent replaying the log."}),
		ReplayedRecords: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "vending_eventlog_replayed_records", Help: "Records replayed after the snapshot at the last start."}),
		TornTailRepairs: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "vending_eventlog_torn_tail_repairs_total", Help: "Torn tails truncated at start."}),
		Snapshots: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "vending_eventlog_snapshots_total", Help: "Snapshots written."}),
	}
	if reg != nil {
		reg.MustRegister(m.Appends, m.FsyncSeconds, m.BatchRecords, m.ReplaySeconds, m.ReplayedRecords,
			m.TornTailRepairs, m.Snapshots)
	}
	return m
}
