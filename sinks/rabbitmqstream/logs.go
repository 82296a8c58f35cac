package rabbitmqstream

import (
	"context"
	"fmt"
	"log/slog"
	"sync"

	"github.com/rabbitmq/rabbitmq-stream-go-client/pkg/logs"
)

// The client library logs through one process-wide logger, to stderr by
// default, including errors it also returns or reports (a socket closed
// by Close). Its lines go to the relay's logger at debug level: the sink
// logs at its own levels what it makes of them.
var setLibraryLogger sync.Once

type libraryLogger struct{ log *slog.Logger }

func (l libraryLogger) line(msg string, v ...any) {
	if l.log.Enabled(context.Background(), slog.LevelDebug) {
		l.log.Debug(fmt.Sprintf(msg, v...))
	}
}

func (l libraryLogger) Info(msg string, v ...any)  { l.line(msg, v...) }
func (l libraryLogger) Error(msg string, v ...any) { l.line(msg, v...) }
func (l libraryLogger) Debug(msg string, v ...any) { l.line(msg, v...) }
func (l libraryLogger) Warn(msg string, v ...any)  { l.line(msg, v...) }

func useLogger(log *slog.Logger) {
	setLibraryLogger.Do(func() {
		logs.SetLogger(libraryLogger{log.With("component", "rabbitmq-stream-client")})
	})
}
