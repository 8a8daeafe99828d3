package vending

import "github.com/vendingfleet/vending-operator/internal/contract"

// View is the event as the audit trail shows it, at its sequence: one shape for the HTTP API
// and the dump tool.
func (e *Event) View(seq uint64) contract.Event {
	return contract.Event{Sequence: seq, Type: e.Kind.String(), Count: e.Count, OrderID: e.OrderID,
		Beverage: e.Beverage, Price: e.Price, Change: e.Change, Beans: e.Beans, Milk: e.Milk, Key: e.Key,
		Reason: e.Reason, Message: e.Message}
}
