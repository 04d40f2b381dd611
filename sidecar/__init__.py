"""The sidecar: one per Triton backend; forwards KServe v2 and observes every decision."""
