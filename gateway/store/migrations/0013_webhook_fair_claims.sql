-- The delivery worker claims per endpoint, oldest due first (gateway/store/webhooks.py _CLAIM):
-- one index range per endpoint instead of a scan of every pending delivery.
DROP INDEX webhook_deliveries_endpoint;
CREATE INDEX webhook_deliveries_endpoint_due ON webhook_deliveries (endpoint_id, next_attempt, created)
    WHERE status = 'pending';
