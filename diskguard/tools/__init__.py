"""One-shot commands: top, doctor, reset-all, status, demo."""
