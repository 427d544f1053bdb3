-- Per organization: transfers with transaction.status = 1, transfers.status = 3
-- and a beneficiary whose BIC starts with '4F'.
SELECT o.id, o.name, COUNT(DISTINCT t.id) AS nb_transactions
  FROM public.transaction AS t
  JOIN public.transfers AS tr ON tr.id = t.subject_id
  JOIN public.beneficiaries AS b ON tr.beneficiary_id = b.id
  JOIN public.bank_accounts AS ba ON t.bank_account_id = ba.id
  JOIN public.organizations AS o ON ba.organization_id = o.id
 WHERE b.bic LIKE '4F%'
   AND tr.status = 3
   AND t.subject_type = 'Transfer'
   AND t.status = 1
 GROUP BY 1, 2
 ORDER BY 1, 2
