"""After the launch: watching containers' exits, cancellation, restart recovery, cleanup, flow output."""
