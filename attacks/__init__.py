"""What a party can learn: the six known flaws re-created and caught, the audit, and the protocol's own leaks measured."""
