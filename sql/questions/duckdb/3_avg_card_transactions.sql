-- Per organization: average count of card_transactions with status = 0 per
-- transaction of subject_type 'Card'.
WITH card_transactions_agg AS (
    SELECT t.id AS transaction_id, count(DISTINCT ct.id) AS nb_card_transactions
      FROM public.transaction AS t
      LEFT JOIN public.card_transactions ct ON ct.transaction_id = t.id AND ct.status = 0
     WHERE t.subject_type = 'Card'
     GROUP BY 1
)
SELECT o.id, o.name, AVG(nb_card_transactions) AS avg_card_transactions
  FROM public.transaction AS t
  JOIN card_transactions_agg AS ct ON ct.transaction_id = t.id
  JOIN public.bank_accounts AS ba ON t.bank_account_id = ba.id
  JOIN public.organizations AS o ON ba.organization_id = o.id
 GROUP BY 1, 2
 ORDER BY 1, 2
