"""Two-phase tool calls (TTC): cheap prepare, commit only when needed, durable audit log."""

from __future__ import annotations

from coreason_runtime.txn._log import AuditLog
from coreason_runtime.txn._tool import CommandTool, Tool, python_tool
from coreason_runtime.txn._txn import RecoveryReport, ToolTransactions, Transaction

__all__ = [
    "AuditLog",
    "CommandTool",
    "RecoveryReport",
    "Tool",
    "ToolTransactions",
    "Transaction",
    "python_tool",
]
