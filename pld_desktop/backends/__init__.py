"""Model backends: adapters from the core's Teacher/Student/Embedder protocols to real libraries."""
