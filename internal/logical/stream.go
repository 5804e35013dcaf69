package logical

import (
	"context"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgcdc/pgcdc/internal/change"
	"github.com/pgcdc/pgcdc/internal/checkpoint"
	"github.com/pgcdc/pgcdc/internal/errs"
	"github.com/pgcdc/pgcdc/internal/txbuf"
)

// stream is the read loop of one replication connection. Its goroutine
// owns conn and the fields below; the dispatcher's keeper goroutine calls
// idle (which writes to conn) only while this goroutine is inside a direct
// handler call, never at the same time (see doc.go).
type stream struct {
	s       *Source
	conn    *pgconn.PgConn
	pool    *pgxpool.Pool
	dec     *decoder
	tracker *checkpoint.Tracker

	txn *checkpoint.Txn
	txb *txbuf.Buffer // grouped events of the current transaction

	inStream   bool // between Stream Start and Stream Stop
	streamXid  uint32
	streams    map[uint32]*streamedTxn // in-progress streamed transactions
	received   pglogrepl.LSN           // highest WAL position received
	serverEnd  pglogrepl.LSN           // server's WAL end from the last message
	sentFlush  pglogrepl.LSN
	lastStatus time.Time
	unreported bool               // the confirmed position moved since the last report
	idle       func() error       // answers the server while a handler runs
	windows    map[string]*window // open snapshot chunks, by watermark id
	rowMsg     rowMsg             // the row message being handled (reused)
}

// minStatusGap limits how often a moved position is reported.
const minStatusGap = 100 * time.Millisecond

func (st *stream) run(ctx context.Context) error {
	defer func() {
		if st.txb != nil { // a transaction cut short: it is sent again
			_ = st.txb.Close()
		}
		for _, t := range st.streams {
			_ = t.buf.Close()
		}
	}()
	st.sentFlush = pglogrepl.LSN(st.tracker.Confirmed())
	st.lastStatus = time.Now()
	// Called while a delivery waits for room, or from another goroutine
	// while a handler runs on this one: the stream answers the server
	// meanwhile.
	st.idle = func() error { return st.maybeSendStatus(ctx, false) }
	// Receives run without a context (pgconn would watch one per message,
	// which shows at 100k messages a second) under a read deadline renewed
	// at most every half second; ctx ending moves the deadline to the past.
	dl := newDeadline(ctx, st.conn.Conn())
	defer dl.close()
	for {
		now := time.Now()
		if err := st.statusAt(ctx, false, false, now); err != nil {
			return err
		}
		if st.unreported {
			// A moved position waits for minStatusGap: wake up to report
			// it then, not when the next message comes. (A walsender that
			// asked for a reply sends nothing more until it gets one.)
			dl.until(st.lastStatus.Add(minStatusGap))
		} else {
			dl.renew(now)
		}
		msg, err := st.conn.ReceiveMessage(context.Background())
		if err != nil {
			if pgconn.Timeout(err) && ctx.Err() == nil {
				if st.txn == nil {
					// Quiet between transactions: report, and ask for the
					// server's position (a keepalive). A walsender busy
					// decoding other tables' WAL sends nothing on its own,
					// and the slot would pin that WAL meanwhile.
					if err := st.statusAt(ctx, true, true, time.Now()); err != nil {
						return err
					}
				}
				continue
			}
			if ctx.Err() != nil {
				return fmt.Errorf("source %s: receive: %w", st.s.label(), ctx.Err())
			}
			return fmt.Errorf("source %s: receive: %w", st.s.label(), err)
		}
		switch m := msg.(type) {
		case *pgproto3.CopyData:
			if err := st.copyData(ctx, m.Data); err != nil {
				return err
			}
		case *pgproto3.ErrorResponse:
			return fmt.Errorf("source %s: server error: %w", st.s.label(), pgconn.ErrorResponseToPgError(m))
		case *pgproto3.CopyDone:
			return fmt.Errorf("source %s: server ended the replication stream", st.s.label())
		}
	}
}

func (st *stream) copyData(ctx context.Context, data []byte) error {
	if len(data) == 0 {
		return nil
	}
	switch data[0] {
	case pglogrepl.PrimaryKeepaliveMessageByteID:
		ka, err := pglogrepl.ParsePrimaryKeepaliveMessage(data[1:])
		if err != nil {
			return fmt.Errorf("source %s: %w", st.s.label(), err)
		}
		st.serverEnd = max(st.serverEnd, ka.ServerWALEnd)
		// Everything up to the server's position that was sent has been
		// read; if nothing is unresolved, nothing up to there concerns us.
		if st.txn == nil {
			st.tracker.Idle(uint64(ka.ServerWALEnd))
		}
		return st.maybeSendStatus(ctx, ka.ReplyRequested)
	case pglogrepl.XLogDataByteID:
		x, err := pglogrepl.ParseXLogData(data[1:])
		if err != nil {
			return fmt.Errorf("source %s: %w", st.s.label(), err)
		}
		st.received = max(st.received, x.WALStart+pglogrepl.LSN(len(x.WALData)))
		st.serverEnd = max(st.serverEnd, x.ServerWALEnd)
		return st.logical(ctx, x.WALData)
	}
	return nil
}

// logical handles one pgoutput message.
func (st *stream) logical(ctx context.Context, data []byte) error {
	if isRowMsg(data) {
		return st.row(ctx, data)
	}
	msg, err := parse(data, st.inStream)
	if err != nil {
		return st.undecodable(err)
	}
	if ok, err := st.streamMessage(ctx, msg); ok {
		return err
	}
	msg, xid := unwrapV2(msg)
	switch m := msg.(type) {
	case *pglogrepl.BeginMessage:
		st.txn = st.tracker.Open()
		st.dec.begin(m)
	case *pglogrepl.CommitMessage:
		return st.commit(ctx, m.TransactionEndLSN)
	case *pglogrepl.RelationMessage:
		return st.dec.relation(ctx, m)
	case *pglogrepl.LogicalDecodingMessage:
		if m.Transactional && m.Prefix == SnapshotPrefix && !st.inStream {
			return st.onWatermark(ctx, m.Content)
		}
		if !m.Transactional || m.Prefix != ContextPrefix {
			return nil
		}
		if st.inStream {
			if t := st.streams[st.streamXid]; t != nil {
				t.ctx = change.ContextJSON(m.Content)
			}
			return nil
		}
		st.dec.txContext = change.ContextJSON(m.Content)
	case *pglogrepl.TruncateMessage:
		if st.inStream {
			return st.streamed(xid, st.dec.truncateRecords(m)...)
		}
		for _, c := range st.dec.truncate(m) {
			if err := st.handleChange(ctx, c); err != nil {
				return err
			}
		}
	}
	return nil
}

// undecodable reports a message that cannot be decoded.
func (st *stream) undecodable(err error) error {
	return &decodeError{at: st.received, err: fmt.Errorf("%w: source %s: pgoutput message in the WAL before %s: %v (nothing after it was confirmed; report this with the server version)",
		errs.ErrDecode, st.s.label(), st.received, err)}
}

// decodeError is a message of the stream that could not be decoded, at
// WAL position at. Reconnecting is tried (a message damaged on the way is
// sent again whole), but the same position failing again and again stops
// the source (see Source.Run).
type decodeError struct {
	at  pglogrepl.LSN
	err error
}

func (e *decodeError) Error() string { return e.err.Error() }
func (e *decodeError) Unwrap() error { return e.err }

// row handles an Insert, Update or Delete message.
func (st *stream) row(ctx context.Context, data []byte) error {
	m := &st.rowMsg
	if err := m.parse(data, st.inStream); err != nil {
		return st.undecodable(err)
	}
	if st.inStream {
		if t := st.streams[st.streamXid]; t != nil {
			st.dec.txContext = t.ctx
		}
		rec, err := st.dec.record(m)
		if err != nil {
			return err
		}
		return st.streamed(m.xid, rec)
	}
	c, err := st.dec.change(m)
	if err != nil || c == nil {
		return err
	}
	return st.handleChange(ctx, c)
}

// handleChange routes one change of the current transaction: grouped for a
// transaction handler, or to its lane.
func (st *stream) handleChange(ctx context.Context, c *change.Change) error {
	if len(st.windows) > 0 {
		st.noteChange(c)
	}
	if st.s.disp.IsTx(c) {
		if c.Action == change.Truncate {
			return nil
		}
		if st.txb == nil {
			st.txb = txbuf.New(st.s.cfg.TxBufferBytes, "")
		}
		return st.txb.Add(c.Message)
	}
	if c.Action == change.Truncate {
		// Every earlier change must be handled before a TRUNCATE runs:
		// lanes would otherwise let it overtake them.
		if err := st.barrier(ctx); err != nil {
			return err
		}
	}
	return st.deliver(ctx, c)
}

// commit ends the current transaction: its grouped changes go to the
// transaction handler, and its end may be confirmed once all is resolved.
func (st *stream) commit(ctx context.Context, end pglogrepl.LSN) error {
	if st.txb != nil {
		c := st.dec.transaction(st.txb)
		st.txb = nil
		if err := st.deliver(ctx, c); err != nil {
			_ = c.Tx.Close()
			return err
		}
	}
	if st.txn != nil {
		st.s.cfg.Observe.Committed(uint64(end), st.dec.commitTime)
		st.txn.Seal(uint64(end))
		st.txn = nil
	}
	return nil
}

// unwrapV2 returns the protocol-1 message inside a protocol-2 one, with the
// (sub)transaction id it carries inside a stream. (Row messages do not come
// here: the decoder parses those itself, see rowmsg.go.)
func unwrapV2(msg pglogrepl.Message) (pglogrepl.Message, uint32) {
	switch m := msg.(type) {
	case *pglogrepl.TruncateMessageV2:
		return &m.TruncateMessage, m.Xid
	case *pglogrepl.RelationMessageV2:
		return &m.RelationMessage, m.Xid
	case *pglogrepl.TypeMessageV2:
		return &m.TypeMessage, m.Xid
	case *pglogrepl.LogicalDecodingMessageV2:
		return &m.LogicalDecodingMessage, m.Xid
	}
	return msg, 0
}

// deliver hands a change to its lane, answering the server meanwhile so a
// slow handler does not get the connection dropped.
func (st *stream) deliver(ctx context.Context, c *change.Change) error {
	if st.txn == nil {
		return nil
	}
	st.txn.Add(1)
	c.Pos = st.txn
	queued, err := st.s.disp.Send(ctx, c, st.idle)
	if !queued {
		st.txn.Done() // not routed: resolved at once
	}
	return err
}

// barrier waits until every change delivered so far is resolved.
func (st *stream) barrier(ctx context.Context) error {
	for st.txn != nil && !st.tracker.Drained(st.txn) {
		if err := st.maybeSendStatus(ctx, false); err != nil {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Millisecond):
		}
	}
	return nil
}

// maybeSendStatus reports the confirmed position when it moved (at most
// every minStatusGap), when the server asks, and every StatusInterval.
func (st *stream) maybeSendStatus(ctx context.Context, force bool) error {
	return st.statusAt(ctx, force, false, time.Now())
}

// statusAt is maybeSendStatus at time now; probe asks the server to answer
// with its position.
func (st *stream) statusAt(ctx context.Context, force, probe bool, now time.Time) error {
	flush := pglogrepl.LSN(st.tracker.Confirmed())
	since := now.Sub(st.lastStatus)
	st.unreported = flush != st.sentFlush
	if !force && since < st.s.cfg.StatusInterval && (!st.unreported || since < minStatusGap) {
		return nil
	}
	err := pglogrepl.SendStandbyStatusUpdate(ctx, st.conn, pglogrepl.StandbyStatusUpdate{
		WALWritePosition: max(st.received, flush),
		WALFlushPosition: flush,
		WALApplyPosition: flush,
		ClientTime:       now,
		ReplyRequested:   probe,
	})
	if err != nil {
		return fmt.Errorf("source %s: sending standby status: %w", st.s.label(), err)
	}
	st.sentFlush = flush
	st.lastStatus = now
	st.s.cfg.Observe.Confirmed(uint64(flush))
	st.unreported = false
	return nil
}

// deadline keeps a read deadline about a second ahead on a connection, so a
// receive returns at least once a second, and moves it to the past when ctx
// ends, so a receive returns at once.
type deadline struct {
	conn    net.Conn
	stop    func() bool
	mu      sync.Mutex
	ended   bool // ctx ended or close was called: the deadline stays put
	renewed time.Time
	at      time.Time // the deadline set (written by the stream's goroutine only)
}

func newDeadline(ctx context.Context, conn net.Conn) *deadline {
	d := &deadline{conn: conn}
	d.stop = context.AfterFunc(ctx, func() {
		d.mu.Lock()
		defer d.mu.Unlock()
		if !d.ended {
			d.ended = true
			_ = d.conn.SetReadDeadline(time.Unix(1, 0))
		}
	})
	return d
}

// renew moves the deadline a second past now when it was last moved more
// than half a second before now.
func (d *deadline) renew(now time.Time) {
	if now.Sub(d.renewed) < 500*time.Millisecond {
		return
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if !d.ended {
		d.renewed, d.at = now, now.Add(time.Second)
		_ = d.conn.SetReadDeadline(d.at)
	}
}

// until moves the deadline to t (a wake-up sooner than a second); the next
// renew moves it a second ahead again.
func (d *deadline) until(t time.Time) {
	if t.Equal(d.at) { // only the stream's goroutine writes at
		return
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if !d.ended {
		d.at, d.renewed = t, time.Time{}
		_ = d.conn.SetReadDeadline(t)
	}
}

// close clears the deadline: the connection is used without one afterwards.
func (d *deadline) close() {
	d.stop()
	d.mu.Lock()
	defer d.mu.Unlock()
	d.ended = true
	_ = d.conn.SetReadDeadline(time.Time{})
}
