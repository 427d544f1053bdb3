-- Per organization: count of transactions with status = 1.
SELECT o.id, o.name, COUNT(DISTINCT t.id) AS nb_transactions
  FROM public.transaction AS t
  JOIN public.bank_accounts AS ba ON t.bank_account_id = ba.id
  JOIN public.organizations AS o ON ba.organization_id = o.id
 WHERE t.status = 1
 GROUP BY 1, 2
 ORDER BY 1, 2
