"""No background work for clients: a key's expiry is enforced by the nodes themselves
(``expires_at`` travels in the bundle) and expired keys drop out at the next rollout."""
